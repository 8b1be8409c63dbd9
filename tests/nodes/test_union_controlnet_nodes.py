"""Union ControlNets and Control-LoRAs end to end: ControlNetLoader on a tiny SDXL union ControlNet
(LDM layout) and a tiny SDXL Control-LoRA (Stability's layout), SetUnionControlNetType and
ControlNetApplyAdvanced steering a KSampler run on a tiny SDXL checkpoint (strength, window, type)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.backend.controlnet import ControlNetConfig
from engine.backend.controlnet_union import UnionConfig, UnionControlNet
from engine.backend.unet import UNetModel
from engine.executor import Executor
from engine.models.handles import ControlNetHandle, FileRef
from nodes.controlnet_union import SetUnionControlNetType
from tests.backend.test_control_lora import control_lora_state
from tests.fixtures.tiny_checkpoints import _random_weights, build_checkpoint, save_state_dict, unet_config
from tests.nodes.sd_workflow import make_executor, node_context, run_prompt

UNION_FILE = "tiny-union-sdxl.safetensors"
LORA_FILE = "control-lora-tiny-rank4.safetensors"


def build_union_controlnet(path: Path, seed: int = 0) -> Path:
    """A tiny ProMax-like union ControlNet (8 types) for the tiny SDXL UNet, random weights, LDM keys."""
    with torch.device("meta"):
        net = UnionControlNet(ControlNetConfig(unet_config("sdxl")), UnionConfig(8, 256, 1))
    weights = _random_weights(net, torch.Generator().manual_seed(seed))
    return save_state_dict({k: t.half() for k, t in weights.items()}, path)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_checkpoint(root / "checkpoints" / "tiny-sdxl.safetensors", "sdxl")
    build_union_controlnet(root / "controlnet" / UNION_FILE)
    with torch.device("meta"):
        unet = UNetModel(unet_config("sdxl"))
    save_state_dict({k: t.half() for k, t in control_lora_state(unet).items()}, root / "controlnet" / LORA_FILE)
    return root


@pytest.fixture
def executor(model_root: Path, tmp_path: Path) -> Executor:
    executor = make_executor(tmp_path, model_root)
    square = np.zeros((64, 64, 3), dtype=np.uint8)
    square[16:48, 16:48] = 255
    Image.fromarray(square).save(executor.folders.input_dir / "square.png")
    return executor


def _prompt(*, strength: float | None = 1.0, union_type: str | None = None, start: float = 0.0,
            end: float = 1.0, control_net: str = UNION_FILE) -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sdxl.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a square", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "square.png"}},
        "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control_net}},
    }
    positive, negative, control = ["pos", 0], ["neg", 0], ["cn", 0]
    if union_type is not None:
        nodes["type"] = {"class_type": "SetUnionControlNetType", "inputs": {"control_net": control,
                                                                             "type": union_type}}
        control = ["type", 0]
    if strength is not None:
        nodes["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": control, "image": ["image", 0],
            "strength": strength, "start_percent": start, "end_percent": end}}
        positive, negative = ["apply", 0], ["apply", 1]
    nodes["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": 4, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["ckpt", 0], "positive": positive, "negative": negative, "latent_image": ["empty", 0]}}
    return nodes


def _sampled(executor: Executor, **kwargs: Any) -> torch.Tensor:
    return run_prompt(executor, _prompt(**kwargs), latent=["sample", 0])["latent"]["samples"]


def test_union_controlnet_steers_sampling_and_its_type_matters(executor: Executor) -> None:
    plain = _sampled(executor, strength=None)
    auto = _sampled(executor, union_type="auto")
    assert auto.shape == plain.shape == (1, 4, 8, 8)
    assert (auto - plain).abs().max() > 1e-3
    assert torch.equal(_sampled(executor), auto)  # no SetUnionControlNetType = auto
    depth = _sampled(executor, union_type="depth")
    canny = _sampled(executor, union_type="canny/lineart/anime_lineart/mlsd")
    assert (depth - auto).abs().max() > 1e-3 and (depth - canny).abs().max() > 1e-3
    assert torch.equal(_sampled(executor, union_type="depth", strength=0.0), plain)
    assert torch.equal(_sampled(executor, union_type="depth", start=1.0, end=1.0), plain)  # never active
    half = _sampled(executor, union_type="depth", start=0.0, end=0.5)
    assert not torch.equal(half, depth) and not torch.equal(half, plain)


def test_set_union_type_returns_a_new_handle_with_the_type(executor: Executor, tmp_path: Path) -> None:
    handle = ControlNetHandle(FileRef.of(executor.folders.model_path("controlnet", UNION_FILE)))
    node = SetUnionControlNetType()
    ctx = node_context(executor)
    (typed,) = node.run(ctx, handle, "tile")
    assert typed.union_type == 6 and handle.union_type is None and typed.file == handle.file
    assert node.run(ctx, typed, "auto")[0].union_type is None
    assert node.run(ctx, handle, "repaint")[0].union_type == 7
    with pytest.raises(ValueError, match="not one of"):
        node.run(ctx, handle, "pose")


def test_control_lora_steers_sampling_and_strength_zero_does_not(executor: Executor) -> None:
    plain = _sampled(executor, strength=None, control_net=LORA_FILE)
    steered = _sampled(executor, control_net=LORA_FILE)
    assert steered.shape == plain.shape == (1, 4, 8, 8)
    assert (steered - plain).abs().max() > 1e-3
    assert torch.equal(_sampled(executor, strength=0.0, control_net=LORA_FILE), plain)
    assert torch.equal(_sampled(executor, start=1.0, end=1.0, control_net=LORA_FILE), plain)  # never active
    half = _sampled(executor, start=0.0, end=0.5, control_net=LORA_FILE)
    assert not torch.equal(half, steered) and not torch.equal(half, plain)
