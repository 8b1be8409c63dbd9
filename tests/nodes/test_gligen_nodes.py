"""GLIGENLoader and GLIGENTextBoxApply end to end on the demo SD1 model (widths 64 / 128, pooled text
64 wide): GLIGEN files written here with a fuser on each of the UNet's transformer blocks change a
KSampler run, gates at zero and no box give the plain run bit for bit, .pth and .safetensors sample the
same, boxes accumulate on the entries, and wrong files or a mismatched CLIP fail at the node."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors import safe_open

from engine.events import ListSink
from engine.executor import Executor
from tests.backend.gligen_files import gligen_state, transformer_blocks, write_pth, write_safetensors
from tests.nodes.sd_workflow import DEMO_CHECKPOINT, DEMO_MODELS, make_executor, require_demo_model, run_prompt

TEXT_DIM = 64  # the demo CLIP's pooled output
OBJECT_DIM = 32


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    require_demo_model()
    with safe_open(str(DEMO_MODELS / "checkpoints" / DEMO_CHECKPOINT), "pt") as handle:
        blocks = transformer_blocks((k, tuple(handle.get_slice(k).get_shape())) for k in handle.keys())  # noqa: SIM118
    assert len(blocks) >= 3
    folder = tmp_path_factory.mktemp("gligen_models") / "gligen"
    state = gligen_state(blocks, TEXT_DIM, OBJECT_DIM, alpha=0.8, seed=1)
    write_safetensors(folder / "boxes.safetensors", state)
    write_pth(folder / "sub" / "boxes.pth", state)
    write_safetensors(folder / "zero.safetensors", gligen_state(blocks, TEXT_DIM, OBJECT_DIM, alpha=0.0, seed=1))
    write_safetensors(folder / "sd15-text.safetensors", gligen_state(blocks, 768, OBJECT_DIM, alpha=0.8))
    write_safetensors(folder / "not-gligen.safetensors", {"lora_unet_down.lora_up.weight": torch.zeros(4, 4)})
    return make_executor(tmp_path_factory.mktemp("gligen"), DEMO_MODELS, folder.parent)


def _prompt(gligen: str | None, boxes: list[dict[str, Any]], seed: int = 3) -> dict[str, Any]:
    graph: dict[str, Any] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}}}
    graph["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}}
    graph["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": ["ckpt", 1]}}
    positive: list[Any] = ["pos", 0]
    if gligen is not None:
        graph["gligen"] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": gligen}}
    for index, box in enumerate(boxes):
        graph[f"box{index}"] = {"class_type": "GLIGENTextBoxApply", "inputs": {
            "conditioning_to": positive, "clip": ["ckpt", 1], "gligen_textbox_model": ["gligen", 0], **box}}
        positive = [f"box{index}", 0]
    graph["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": seed, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["ckpt", 0], "positive": positive, "negative": ["neg", 0], "latent_image": ["empty", 0]}}
    return graph


CIRCLE = {"text": "a red circle", "width": 32, "height": 24, "x": 8, "y": 16}
SQUARE = {"text": "a green square", "width": 16, "height": 40, "x": 40, "y": 0}


def _sample(executor: Executor, gligen: str | None = None, *boxes: dict[str, Any], seed: int = 3) -> torch.Tensor:
    """The sampled latent; each test uses its own seed, as a graph run twice is answered from the cache
    without running the capture node again."""
    return run_prompt(executor, _prompt(gligen, list(boxes), seed), latent=["sample", 0])["latent"]["samples"].clone()


@pytest.fixture(scope="module")
def plain(executor: Executor) -> torch.Tensor:
    return _sample(executor)


def test_a_box_changes_the_sampled_latent(executor: Executor, plain: torch.Tensor) -> None:
    grounded = _sample(executor, "boxes.safetensors", CIRCLE)
    assert (grounded - plain).abs().max() > 1e-3
    moved = _sample(executor, "boxes.safetensors", {**CIRCLE, "x": 24})
    assert (moved - grounded).abs().max() > 1e-4


def test_zero_gates_give_the_plain_run_bit_for_bit(executor: Executor, plain: torch.Tensor) -> None:
    assert torch.equal(_sample(executor, "zero.safetensors", CIRCLE, SQUARE), plain)


def test_pth_and_safetensors_files_sample_the_same(executor: Executor) -> None:
    from_pth = _sample(executor, "sub/boxes.pth", CIRCLE, seed=4)
    from_safetensors = _sample(executor, "boxes.safetensors", CIRCLE, seed=4)
    torch.testing.assert_close(from_pth, from_safetensors, rtol=0, atol=1e-6)


def test_boxes_accumulate_in_latent_pixels(executor: Executor) -> None:
    cond = run_prompt(executor, _prompt("boxes.safetensors", [CIRCLE, SQUARE], seed=6), cond=["box1", 0])["cond"]
    kind, model, params = cond[0][1]["gligen"]
    assert kind == "position" and len(model.fusers) >= 3
    assert [tuple(p[1:]) for p in params] == [(3, 4, 2, 1), (5, 2, 0, 5)]
    assert params[0][0].shape == (1, TEXT_DIM)
    two = _sample(executor, "boxes.safetensors", CIRCLE, SQUARE, seed=5)
    assert (two - _sample(executor, "boxes.safetensors", CIRCLE, seed=5)).abs().max() > 1e-4


def _error(executor: Executor, gligen: str) -> Any:
    graph = {**_prompt(gligen, [CIRCLE]), "capture": {"class_type": "Capture", "inputs": {"latent": ["sample", 0]}}}
    outcome = executor.execute(graph, "p", ListSink())
    assert outcome.status_str == "error"
    return outcome.error


def test_a_file_that_is_not_gligen_fails_at_the_loader(executor: Executor) -> None:
    error = _error(executor, "not-gligen.safetensors")
    assert error.node_id == "gligen"
    assert "gligen_name" in str(error) and "not-gligen.safetensors is not a GLIGEN file" in str(error)


def test_a_gligen_for_another_text_width_fails_at_the_box_node(executor: Executor) -> None:
    error = _error(executor, "sd15-text.safetensors")
    assert error.node_id == "box0"
    assert "GLIGENTextBoxApply" in str(error) and "64 features" in str(error) and "takes 768" in str(error)
