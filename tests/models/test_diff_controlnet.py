"""Difference ControlNets: a file written as (full ControlNet - the demo model's UNet) for the weights the
two share, plus the ``difference`` marker, loads through DiffControlNetLoader to the full net's weights
and gives the full ControlNet file's KSampler result; ControlNetLoader refuses it, naming the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.unet import UNetConfig
from engine.events import ExecutionError, ListSink
from engine.models import parts
from engine.models.controlnet_convert import load_controlnet
from engine.models.diff_controlnet import load_diff_controlnet
from engine.models.handles import CHECKPOINT_UNET
from engine.models.loaders import CheckpointFile
from tests.nodes.sd_workflow import (
    DEMO_CHECKPOINT,
    DEMO_MODELS,
    checkpoint_loader,
    make_executor,
    require_demo_model,
    run_prompt,
    shape_image,
    text,
)

PREFIX = "control_model."
BASE = DEMO_MODELS / "checkpoints" / DEMO_CHECKPOINT


def _base_unet() -> dict[str, torch.Tensor]:
    with CheckpointFile(BASE) as ckpt:
        return {name: t.float() for name, t in parts.unet_tensors(ckpt, CHECKPOINT_UNET)}


@pytest.fixture(scope="module")
def control_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/controlnet with full.safetensors and diff.safetensors (the same net, stored two ways)."""
    require_demo_model()
    base = _base_unet()
    config = ControlNetConfig(UNetConfig.from_state_dict({k: tuple(v.shape) for k, v in base.items()}))
    torch.manual_seed(0)
    state = ControlNet(config).state_dict()
    full: dict[str, torch.Tensor] = {}
    diff: dict[str, torch.Tensor] = {"difference": torch.zeros(1)}
    shared = 0
    for name, weight in state.items():
        # A fine-tuned copy: the base weight plus a small change where the UNet has the weight.
        value = base[name] + 0.05 * weight if name in base else weight * (0.2 if name.startswith("zero") else 1)
        full[PREFIX + name] = value.contiguous()
        diff[PREFIX + name] = (value - base[name]).contiguous() if name in base else value.contiguous()
        shared += name in base
    assert shared > 20
    root = tmp_path_factory.mktemp("diffcn")
    (root / "controlnet").mkdir()
    save_file(full, str(root / "controlnet" / "full.safetensors"))
    save_file(diff, str(root / "controlnet" / "diff.safetensors"))
    return root


def test_difference_file_loads_to_the_full_weights(control_root: Path) -> None:
    cpu, f32 = torch.device("cpu"), torch.float32
    full = load_controlnet(control_root / "controlnet" / "full.safetensors", device=cpu, dtype=f32)
    diff = load_diff_controlnet(control_root / "controlnet" / "diff.safetensors", BASE, CHECKPOINT_UNET,
                                device=cpu, dtype=f32)
    expected = full.state_dict()
    for name, tensor in diff.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=0)


def _prompt(loader: dict[str, Any]) -> dict[str, Any]:
    return {
        "ckpt": checkpoint_loader(),
        "pos": text("a red circle on a blue background"),
        "neg": text("blurry"),
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "hint": {"class_type": "LoadImage", "inputs": {"image": "hint.png"}},
        "cn": loader,
        "apply": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["apply", 0], "negative": ["apply", 1], "latent_image": ["empty", 0]}},
    }


def test_diff_loader_samples_like_the_full_file(control_root: Path, tmp_path: Path) -> None:
    executor = make_executor(tmp_path, DEMO_MODELS, control_root)
    shape_image(executor.folders.input_dir / "hint.png", color="yellow")
    full = run_prompt(executor, _prompt({"class_type": "ControlNetLoader", "inputs": {
        "control_net_name": "full.safetensors"}}), latent=["sample", 0])["latent"]["samples"]
    diff = run_prompt(executor, _prompt({"class_type": "DiffControlNetLoader", "inputs": {
        "model": ["ckpt", 0], "control_net_name": "diff.safetensors"}}), latent=["sample", 0])["latent"]["samples"]
    torch.testing.assert_close(diff, full, atol=1e-4, rtol=1e-4)
    plain_prompt = _prompt({"class_type": "ControlNetLoader", "inputs": {"control_net_name": "full.safetensors"}})
    plain_prompt["apply"]["inputs"]["strength"] = 0.0
    plain = run_prompt(executor, plain_prompt, latent=["sample", 0])["latent"]["samples"]
    assert (full - plain).abs().mean() > 1e-3  # the net does steer, so the equality above means something

    sink = ListSink()
    refused = _prompt({"class_type": "ControlNetLoader", "inputs": {"control_net_name": "diff.safetensors"}})
    outcome = executor.execute({**refused, "capture": {"class_type": "Capture", "inputs": {
        "latent": ["sample", 0]}}}, "p", sink)
    assert outcome.status_str == "error"
    error = [e for e in sink.events if isinstance(e, ExecutionError)][-1]
    assert error.node_id == "cn" and "DiffControlNetLoader" in error.exception_message
