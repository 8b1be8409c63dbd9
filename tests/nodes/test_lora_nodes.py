"""LoraLoader / LoraLoaderModelOnly through the real executor and registry, on a tiny SD1 checkpoint and
kohya LoRA files in real folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.cache import OutputCache
from engine.events import ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.models.manager import ModelManager
from engine.node import Input, Node, NodeOutput
from engine.types import LATENT
from main import build_registry
from tests.fixtures.tiny_checkpoints import build_checkpoint

RANK = 4


def lora_pair(name: str, out: int, inp: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"{name}.lora_up.weight": torch.randn(out, RANK, generator=generator),
            f"{name}.lora_down.weight": torch.randn(RANK, inp, generator=generator),
            f"{name}.alpha": torch.tensor(float(RANK))}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_checkpoint(root / "checkpoints" / "tiny-sd1.safetensors", "sd1")
    build_checkpoint(root / "checkpoints" / "tiny-sdxl.safetensors", "sdxl")
    (root / "loras").mkdir()
    tensors = {**lora_pair("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32, 1),
               **lora_pair("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v", 64, 64, 2),
               **lora_pair("lora_te_text_model_encoder_layers_1_mlp_fc2", 64, 256, 3)}
    save_file(tensors, str(root / "loras" / "tiny-sd1-lora.safetensors"))
    return root


@pytest.fixture
def executor(model_root: Path, tmp_path: Path) -> Executor:
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "tmp", (model_root,))
    folders.ensure()
    registry = build_registry()

    @registry.register
    class CaptureLatent(Node):
        inputs = (Input("latent", LATENT),)
        output_node = True

        def run(self, ctx: Any, latent: Any) -> NodeOutput:
            CaptureLatent.last = latent["samples"]
            return NodeOutput(ui={})

    return Executor(registry, folders, OutputCache(2**30, 1000), ModelManager("cpu"))


def prompt(lora: dict[str, Any] | None, ckpt: str = "tiny-sd1.safetensors") -> dict[str, Any]:
    """txt2img; with ``lora`` (LoraLoader inputs besides model/clip) the model and clip go through it."""
    graph: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "show": {"class_type": "CaptureLatent", "inputs": {"latent": ["sample", 0]}},
    }
    model, clip = ["ckpt", 0], ["ckpt", 1]
    if lora is not None:
        class_type = lora.pop("class_type", "LoraLoader")
        if class_type == "LoraLoaderModelOnly":
            lora.pop("strength_clip")
            graph["lora"] = {"class_type": class_type, "inputs": {"model": model, **lora}}
        else:
            graph["lora"] = {"class_type": class_type, "inputs": {"model": model, "clip": clip, **lora}}
            clip = ["lora", 1]
        model = ["lora", 0]
    graph["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": clip}}
    graph["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}}
    graph["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}}
    return graph


def run(executor: Executor, graph: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    outcome = executor.execute(graph, "p", ListSink())
    assert outcome.status_str == "success", outcome.error
    return executor.registry.get("CaptureLatent").last.clone(), outcome  # type: ignore[union-attr]


def lora_inputs(model: float = 1.0, clip: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"lora_name": "tiny-sd1-lora.safetensors", "strength_model": model, "strength_clip": clip, **extra}


def test_lora_changes_the_latent_and_strength_zero_does_not(executor: Executor) -> None:
    plain, _ = run(executor, prompt(None))
    with_lora, _ = run(executor, prompt(lora_inputs()))
    assert not torch.allclose(with_lora, plain)
    zero, _ = run(executor, prompt(lora_inputs(0.0, 0.0)))
    assert torch.equal(zero, plain)
    executor.cache.clear()
    again, _ = run(executor, prompt(None))  # the weights were put back after the LoRA run
    assert torch.equal(again, plain)


def test_model_and_clip_strengths_each_matter(executor: Executor) -> None:
    both, _ = run(executor, prompt(lora_inputs(1.0, 1.0)))
    model_only, _ = run(executor, prompt(lora_inputs(1.0, 0.0)))
    clip_only, _ = run(executor, prompt(lora_inputs(0.0, 1.0)))
    plain, _ = run(executor, prompt(None))
    for a, b in ((both, model_only), (both, clip_only), (model_only, plain), (clip_only, plain)):
        assert not torch.allclose(a, b)
    only_node, _ = run(executor, prompt(lora_inputs(1.0, 0.0, class_type="LoraLoaderModelOnly")))
    assert torch.equal(only_node, model_only)


def test_strength_change_reruns_downstream_without_rereading(executor: Executor) -> None:
    run(executor, prompt(lora_inputs(1.0, 1.0)))
    _, outcome = run(executor, prompt(lora_inputs(0.5, 1.0)))
    assert sorted(outcome.executed) == ["lora", "neg", "pos", "sample", "show"]
    assert executor.models.patcher.files.reads == 1


def test_alias_and_widget_order(executor: Executor, model_root: Path) -> None:
    assert executor.registry.get("LoRALoader") is executor.registry.get("LoraLoader")
    info = executor.registry.node_info(executor.registry.get("LoraLoader"), executor.folders)
    assert info["input_order"]["required"] == ["model", "clip", "lora_name", "strength_model", "strength_clip"]
    assert info["input"]["required"]["lora_name"][0] == ["tiny-sd1-lora.safetensors"]
    assert info["input"]["required"]["strength_model"][1] == {
        "default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
        "tooltip": info["input"]["required"]["strength_model"][1]["tooltip"]}
    assert info["output"] == ["MODEL", "CLIP"] and info["display_name"] == "Load LoRA"


def test_sd1_lora_on_sdxl_fails_with_a_clear_message(executor: Executor) -> None:
    outcome = executor.execute(prompt(lora_inputs(), ckpt="tiny-sdxl.safetensors"), "p", ListSink())
    assert outcome.status_str == "error"
    assert "tiny-sd1-lora.safetensors" in str(outcome.error) and "SDXL" in str(outcome.error)


def test_a_checkpoint_picked_as_lora_fails_at_the_loader(executor: Executor, model_root: Path) -> None:
    target = model_root / "loras" / "not-a-lora.safetensors"
    target.write_bytes((model_root / "checkpoints" / "tiny-sd1.safetensors").read_bytes())
    try:
        outcome = executor.execute(prompt(lora_inputs(lora_name="not-a-lora.safetensors")), "p", ListSink())
    finally:
        target.unlink()
    assert outcome.status_str == "error"
    assert outcome.error.node_id == "lora" and "holds no LoRA weights" in str(outcome.error)
