"""The rectified-flow nodes through a real server: ModelSamplingSD3 / AuraFlow / Flux change how a model is
sampled (a tiny SD1 checkpoint read as a flow model still runs end to end), EmptySD3LatentImage gives 16-channel
latents, FluxGuidance sets the guidance strength on every conditioning entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.api.conftest import LiveServer
from tests.api.test_txt2img import txt2img_prompt
from tests.fixtures.tiny_checkpoints import build_checkpoint


def _pixels(live: LiveServer, prompt: dict[str, Any]) -> np.ndarray:
    entry = live.wait_history(live.queue_prompt(prompt), timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [image] = entry["outputs"]["9"]["images"]
    with Image.open(Path(live.settings.output_dir) / image["filename"]) as picture:
        return np.asarray(picture).astype(np.int16)


def test_flow_model_sampling_nodes_change_the_sampling(make_server: Any) -> None:
    live: LiveServer = make_server()
    folder = Path(live.settings.models_dirs[0]) / "checkpoints"
    folder.mkdir(parents=True)
    build_checkpoint(folder / "tiny.safetensors", "sd1")
    plain = _pixels(live, txt2img_prompt("tiny.safetensors", steps=3))
    results = []
    for node in ({"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}},
                 {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 1.73}},
                 {"class_type": "ModelSamplingFlux", "inputs": {"max_shift": 1.15, "base_shift": 0.5,
                                                                 "width": 64, "height": 48}}):
        prompt = txt2img_prompt("tiny.safetensors", steps=3)
        prompt["20"] = {"class_type": node["class_type"], "inputs": {"model": ["4", 0], **node["inputs"]}}
        prompt["3"]["inputs"]["model"] = ["20", 0]
        results.append(_pixels(live, prompt))
    for flow in results:
        assert flow.shape == plain.shape and np.abs(flow - plain).max() > 0
    assert np.abs(results[0] - results[1]).max() > 0  # the shift and multiplier matter


def test_empty_sd3_latent_and_flux_guidance(make_server: Any) -> None:
    live: LiveServer = make_server()
    prompt = {
        "1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 2}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "sd3"}},
    }
    entry = live.wait_history(live.queue_prompt(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]
    from safetensors.torch import load_file

    [saved] = entry["outputs"]["2"]["latents"]
    tensors = load_file(str(Path(live.settings.output_dir) / saved["subfolder"] / saved["filename"]))
    assert tuple(tensors["latent_tensor"].shape) == (2, 16, 4, 8) and float(tensors["latent_tensor"].abs().max()) == 0


def test_flux_guidance_sets_the_strength_on_every_entry() -> None:
    import torch

    from nodes.flow_models import FluxGuidance

    cond = torch.ones(1, 4, 8)
    conditioning = [[cond, {"pooled_output": None}], [cond, {"guidance": 1.0, "area": (8, 8, 0, 0)}]]
    (out,) = FluxGuidance().run(None, conditioning=conditioning, guidance=2.5)  # type: ignore[arg-type]
    assert [extras["guidance"] for _, extras in out] == [2.5, 2.5]
    assert out[1][1]["area"] == (8, 8, 0, 0) and out[0][0] is cond
    assert conditioning[1][1]["guidance"] == 1.0  # the input is untouched
