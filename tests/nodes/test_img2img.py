"""Image-to-image and the hires-fix chain on the shipped demo model, through the real executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.backend.model_sampling import ModelSampling
from engine.backend.schedules import calculate_sigmas, sigmas_for
from engine.events import Progress
from engine.executor import Executor
from tests.nodes.sd_workflow import (
    DEMO_MODELS,
    checkpoint_loader,
    colour_share,
    ksampler,
    make_executor,
    nearest_colour,
    require_demo_model,
    run_prompt,
    shape_image,
    text,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    require_demo_model()
    executor = make_executor(tmp_path_factory.mktemp("img2img"), DEMO_MODELS)
    shape_image(executor.folders.input_dir / "circle.png", background="blue", color="red", box=(8, 8, 28, 28))
    return executor


def img2img(prompt: str, *denoise: float, seed: int = 1) -> dict[str, Any]:
    """LoadImage -> VAEEncode -> one KSampler (and VAEDecode) per denoise value, named s0, s1, ..."""
    graph: dict[str, Any] = {
        "ckpt": checkpoint_loader(), "pos": text(prompt), "neg": text(""),
        "load": {"class_type": "LoadImage", "inputs": {"image": "circle.png"}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["ckpt", 2]}},
        "rt": {"class_type": "VAEDecode", "inputs": {"samples": ["enc", 0], "vae": ["ckpt", 2]}},
    }
    for index, value in enumerate(denoise):
        graph[f"s{index}"] = ksampler(["enc", 0], seed=seed, steps=8, denoise=value)
        graph[f"d{index}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"s{index}", 0], "vae": ["ckpt", 2]}}
    return graph


def file_pixels(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)


def test_denoise_zero_returns_the_input_exactly(demo: Executor) -> None:
    out = run_prompt(demo, img2img("a yellow square on a green background", 0.0),
                     latent=["s0", 0], latent_in=["enc", 0], image=["d0", 0], image_in=["rt", 0])
    assert torch.equal(out["latent"]["samples"], out["latent_in"]["samples"])
    assert not [e for e in out["events"] if isinstance(e, Progress) and e.node == "s0"]  # no step ran
    assert torch.equal(out["image"], out["image_in"])
    original = file_pixels(demo.folders.input_dir / "circle.png")
    error = (out["image"][0] - original).abs()
    assert out["image"].shape == (1, 64, 64, 3)
    assert float(error.mean()) < 0.03  # the demo VAE's round trip: flat colours back, edges soft
    assert nearest_colour(out["image"][0, 2, 60]) == "blue" and nearest_colour(out["image"][0, 18, 18]) == "red"


def test_low_denoise_keeps_the_picture_and_full_denoise_follows_the_prompt(demo: Executor) -> None:
    out = run_prompt(demo, img2img("a white square on a green background, center, big", 0.25, 1.0),
                     image=["d0", 0], latent=["s1", 0], image_in=["d1", 0])
    original = file_pixels(demo.folders.input_dir / "circle.png")
    light, full = out["image"][0], out["image_in"][0]
    # denoise 0.25: the composition stays (background, where the shape is); the prompt restyles the shape
    assert float((light - original).abs().mean()) < 0.08
    assert colour_share(light, "blue") > 0.8
    rows, cols = torch.nonzero((light - original[2, 60]).abs().amax(dim=-1) > 0.3, as_tuple=True)
    assert len(rows) > 40
    assert abs(float(rows.float().mean()) - 18) < 6 and abs(float(cols.float().mean()) - 18) < 6
    # denoise 1: a new picture that follows the prompt
    assert float((full - original).abs().mean()) > 0.2
    assert colour_share(full, "green") > 0.5


@pytest.mark.parametrize("sampler", ["euler", "dpm_2", "uni_pc"])
@pytest.mark.parametrize(("steps", "denoise"), [(10, 0.5), (7, 0.3), (20, 0.75), (4, 0.99)])
def test_partial_denoise_schedule_is_comfyuis(sampler: str, steps: int, denoise: float) -> None:
    ms = ModelSampling.from_betas("eps")
    got = sigmas_for(ms, "karras", sampler, steps, denoise=denoise)
    total = int(steps / denoise)
    full = sigmas_for(ms, "karras", sampler, total)  # the whole schedule for int(steps / denoise) steps
    assert len(got) == steps + 1
    torch.testing.assert_close(got, full[-(steps + 1):], rtol=0, atol=0)
    if sampler == "euler":
        torch.testing.assert_close(full, calculate_sigmas(ms, "karras", total))
    assert len(sigmas_for(ms, "karras", sampler, steps, denoise=0.0)) == 0


def test_hires_fix_chain(demo: Executor) -> None:
    prompt = {
        "ckpt": checkpoint_loader(), "pos": text("a white square on a green background, center, big"),
        "neg": text(""),
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "low": ksampler(["empty", 0], seed=2, steps=8),
        "up": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["low", 0], "upscale_method": "nearest-exact",
                                                           "scale_by": 2.0}},
        "high": ksampler(["up", 0], seed=2, steps=8, denoise=0.5),
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["high", 0], "vae": ["ckpt", 2]}},
    }
    out = run_prompt(demo, prompt, image=["decode", 0], latent=["high", 0])
    image = out["image"]
    assert image.shape == (1, 128, 128, 3) and out["latent"]["samples"].shape == (1, 4, 16, 16)
    assert nearest_colour(image[0].reshape(-1, 3).median(dim=0).values) == "green"
    assert colour_share(image[0], "green") > 0.6
    assert 0.02 < colour_share(image[0], "white") < 0.4
