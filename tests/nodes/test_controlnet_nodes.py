"""ControlNet nodes end to end through the real executor, on tiny checkpoints and a tiny ControlNet in
real files: LoadImage -> Canny -> ControlNetApply(Advanced) -> KSampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cache import OutputCache
from engine.context import RunContext
from engine.events import ExecutionError, ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.models.manager import ModelManager
from main import build_registry
from nodes.preprocess import ControlNetHintResize, ImageThreshold
from tests.fixtures.tiny_checkpoints import build_checkpoint, build_controlnet, build_controlnet_like_file


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_checkpoint(root / "checkpoints" / "tiny-sd1.safetensors", "sd1")
    build_checkpoint(root / "checkpoints" / "tiny-sdxl.safetensors", "sdxl")
    build_controlnet(root / "controlnet" / "tiny-cn-sd1.safetensors", "sd1")
    build_controlnet_like_file(root / "ControlNet" / "broken-cn.safetensors")  # A1111's folder name
    return root


@pytest.fixture
def executor(model_root: Path, tmp_path: Path) -> Executor:
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "tmp", (model_root,))
    folders.ensure()
    square = np.zeros((64, 64, 3), dtype=np.uint8)
    square[16:48, 16:48] = 255
    Image.fromarray(square).save(folders.input_dir / "square.png")
    registry = build_registry()
    from engine.node import Input, Node, NodeOutput
    from engine.types import LATENT

    @registry.register
    class CaptureLatent(Node):
        inputs = (Input("latent", LATENT),)
        output_node = True

        def run(self, ctx: Any, latent: Any) -> NodeOutput:
            CaptureLatent.last = latent
            return NodeOutput(ui={})

    return Executor(registry, folders, OutputCache(2**30, 1000), ModelManager("cpu"))


def prompt(*, strength: float | None = 1.0, legacy: bool = False, ckpt: str = "tiny-sd1.safetensors",
           control_net: str = "tiny-cn-sd1.safetensors", start: float = 0.0, end: float = 1.0) -> dict[str, Any]:
    """txt2img at 64x64; ``strength=None`` leaves the ControlNet out."""
    nodes: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a square", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "square.png"}},
        "edges": {"class_type": "Canny", "inputs": {"image": ["image", 0], "low_threshold": 0.4,
                                                     "high_threshold": 0.8}},
        "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control_net}},
    }
    positive, negative = ["pos", 0], ["neg", 0]
    if strength is not None and legacy:
        nodes["apply"] = {"class_type": "ControlNetApply", "inputs": {
            "conditioning": ["pos", 0], "control_net": ["cn", 0], "image": ["edges", 0], "strength": strength}}
        positive = ["apply", 0]
    elif strength is not None:
        nodes["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["edges", 0],
            "strength": strength, "start_percent": start, "end_percent": end}}
        positive, negative = ["apply", 0], ["apply", 1]
    nodes["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": 4, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["ckpt", 0], "positive": positive, "negative": negative, "latent_image": ["empty", 0]}}
    nodes["out"] = {"class_type": "CaptureLatent", "inputs": {"latent": ["sample", 0]}}
    return nodes


def sampled(executor: Executor, graph: dict[str, Any]) -> torch.Tensor:
    sink = ListSink()
    outcome = executor.execute(graph, "p", sink)
    assert outcome.status_str == "success", sink.events[-1]
    return executor.registry.get("CaptureLatent").last["samples"]  # type: ignore[union-attr]


def failure(executor: Executor, graph: dict[str, Any]) -> ExecutionError:
    sink = ListSink()
    assert executor.execute(graph, "p", sink).status_str == "error"
    errors = [e for e in sink.events if isinstance(e, ExecutionError)]
    assert errors, sink.events
    return errors[-1]


def test_controlnet_steers_sampling_and_strength_zero_does_not(executor: Executor) -> None:
    plain = sampled(executor, prompt(strength=None))
    steered = sampled(executor, prompt(strength=1.0))
    assert steered.shape == plain.shape == (1, 4, 8, 8)
    assert (steered - plain).abs().max() > 1e-3
    assert torch.equal(sampled(executor, prompt(strength=0.0)), plain)
    assert torch.equal(sampled(executor, prompt(strength=1.0, start=1.0, end=1.0)), plain)  # never active
    assert not torch.equal(sampled(executor, prompt(strength=1.0, start=0.0, end=0.5)), steered)  # part of it
    assert any(entry["part"] == "controlnet" for entry in executor.models.loaded())


def test_legacy_apply_steers_the_negative_too(executor: Executor) -> None:
    plain = sampled(executor, prompt(strength=None))
    legacy = sampled(executor, prompt(strength=1.0, legacy=True))
    assert (legacy - plain).abs().max() > 1e-3
    # Applied to both prompts, like ControlNetApplyAdvanced with the same net on positive and negative.
    assert torch.allclose(legacy, sampled(executor, prompt(strength=1.0)), atol=1e-6)


def test_controlnet_for_another_family_fails_naming_both(executor: Executor) -> None:
    error = failure(executor, prompt(ckpt="tiny-sdxl.safetensors"))
    assert error.node_id == "sample"
    assert "tiny-cn-sd1.safetensors" in error.exception_message and "does not fit" in error.exception_message


def test_loader_lists_both_folder_spellings_and_refuses_broken_files(executor: Executor) -> None:
    choices = executor.registry.get("ControlNetLoader").inputs[0].choice_list(executor.folders)
    assert choices == ["broken-cn.safetensors", "tiny-cn-sd1.safetensors"]
    error = failure(executor, prompt(control_net="broken-cn.safetensors"))
    assert error.node_id == "cn" and "broken-cn.safetensors" in error.exception_message


def test_threshold_and_hint_resize_nodes(ctx: RunContext) -> None:
    image = torch.zeros(1, 30, 90, 3)
    image[:, :, 30:60] = 0.8  # the middle third is bright
    (binary,) = ImageThreshold().run(ctx, image, 0.5)
    assert binary.shape == image.shape and set(binary.unique().tolist()) == {0.0, 1.0}
    assert bool((binary[:, :, 30:60] == 1).all()) and not binary[:, :, :30].any()
    (fitted,) = ControlNetHintResize().run(ctx, image, {"samples": torch.zeros(1, 4, 4, 4)})
    assert fitted.shape == (1, 32, 32, 3)  # centre crop to square, then 8x the latent
    assert bool((fitted > 0.5).all())
