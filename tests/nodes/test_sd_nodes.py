"""Stable Diffusion nodes end to end through the real executor, on tiny checkpoints in real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.cache import OutputCache
from engine.events import ListSink, Progress
from engine.executor import Executor
from engine.folders import Folders
from engine.models.manager import ModelManager
from main import build_registry
from tests.fixtures.tiny_checkpoints import build_checkpoint


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    for family in ("sd1", "sd2", "sdxl", "sdxl_refiner"):
        build_checkpoint(checkpoints / f"tiny-{family}.safetensors", family)
    build_checkpoint(checkpoints / "tiny-sd1-inpaint.safetensors", "sd1", inpaint=True)
    return root


@pytest.fixture
def executor(model_root: Path, tmp_path: Path) -> Executor:
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "tmp", (model_root,))
    folders.ensure()
    return Executor(build_registry(), folders, OutputCache(2**30, 1000), ModelManager("cpu"))


def txt2img(ckpt: str = "tiny-sd1.safetensors", *, seed: int = 1, text: str = "a red circle",
            sampler: str = "euler", steps: int = 3, size: int = 64, batch: int = 1, **ksampler: Any
            ) -> dict[str, Any]:
    inputs = {"seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": sampler, "scheduler": "normal",
              "denoise": 1.0, "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
              "latent_image": ["empty", 0]}
    inputs.update(ksampler)
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "sample": {"class_type": "KSampler", "inputs": inputs},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "show": {"class_type": "StubLatentOut", "inputs": {"latent": ["sample", 0], "image": ["decode", 0]}},
    }


def run(executor: Executor, prompt: dict[str, Any]) -> tuple[Any, ListSink, dict[str, Any]]:
    """Run with an output node that captures the latent and image (registered once per executor)."""
    captured: dict[str, Any] = {}
    if "StubLatentOut" not in executor.registry:
        from engine.node import Input, Node, NodeOutput
        from engine.types import IMAGE, LATENT

        @executor.registry.register
        class StubLatentOut(Node):
            inputs = (Input("latent", LATENT), Input("image", IMAGE))
            output_node = True

            def run(self, ctx: Any, latent: Any, image: Any) -> NodeOutput:
                StubLatentOut.last = {"latent": latent, "image": image}
                return NodeOutput(ui={"shape": [list(image.shape)]})

    sink = ListSink()
    outcome = executor.execute(prompt, "p", sink)
    assert outcome.status_str == "success", sink.events[-1]
    cls = executor.registry.get("StubLatentOut")
    captured.update(cls.last)  # type: ignore[union-attr]
    return outcome, sink, captured


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_txt2img_every_family(executor: Executor, family: str) -> None:
    outcome, sink, out = run(executor, txt2img(f"tiny-{family}.safetensors", batch=2, size=64))
    image, latent = out["image"], out["latent"]["samples"]
    assert image.shape == (2, 64, 64, 3) and image.dtype == torch.float32
    assert latent.shape == (2, 4, 8, 8)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert not torch.equal(image[0], image[1])  # different noise per batch item
    progress = [e for e in sink.events if isinstance(e, Progress)]
    assert [p.value for p in progress] == [1, 2, 3] and all(p.node == "sample" for p in progress)


def test_same_seed_same_image_and_seed_matters(executor: Executor) -> None:
    first = run(executor, txt2img(seed=7))[2]["latent"]["samples"]
    executor.cache.clear()
    again = run(executor, txt2img(seed=7))[2]["latent"]["samples"]
    other = run(executor, txt2img(seed=8))[2]["latent"]["samples"]
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_ancestral_and_sde_samplers_are_seeded(executor: Executor) -> None:
    for sampler in ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"):
        a = run(executor, txt2img(seed=3, sampler=sampler))[2]["latent"]["samples"]
        executor.cache.clear()
        b = run(executor, txt2img(seed=3, sampler=sampler))[2]["latent"]["samples"]
        assert torch.equal(a, b), sampler


def test_prompt_change_reruns_only_encoding_and_sampling(executor: Executor) -> None:
    run(executor, txt2img(text="a red circle"))
    loaded = len(executor.models.loaded())
    outcome = run(executor, txt2img(text="a blue square"))[0]
    assert sorted(outcome.executed) == ["decode", "pos", "sample", "show"]
    assert len(executor.models.loaded()) == loaded  # nothing reloaded


def test_output_cache_holds_handles_not_models(executor: Executor) -> None:
    run(executor, txt2img())
    biggest_model = max(m["bytes"] for m in executor.models.loaded())
    assert executor.cache.nbytes < biggest_model


def test_denoise_zero_returns_the_input_latent(executor: Executor) -> None:
    prompt = txt2img(denoise=0.0)
    prompt["empty"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["zeros", 0], "multiplier": 1.0}}
    prompt["zeros"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    latent = run(executor, prompt)[2]["latent"]["samples"]
    assert torch.equal(latent, torch.zeros(1, 4, 8, 8))


def test_advanced_split_equals_one_run(executor: Executor) -> None:
    common = {"noise_seed": 5, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras",
              "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0]}
    whole = txt2img()
    whole["sample"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "latent_image": ["empty", 0], "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    split = dict(whole)
    split["first"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "latent_image": ["empty", 0], "start_at_step": 0, "end_at_step": 2,
        "return_with_leftover_noise": "enable"}}
    split["sample"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "disable", "latent_image": ["first", 0], "start_at_step": 2, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    a = run(executor, whole)[2]["latent"]["samples"]
    b = run(executor, split)[2]["latent"]["samples"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_inpainting_checkpoint_runs_txt2img(executor: Executor) -> None:
    image = run(executor, txt2img("tiny-sd1-inpaint.safetensors"))[2]["image"]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_conditioning_nodes(executor: Executor) -> None:
    prompt = txt2img()
    prompt["skip"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["ckpt", 1], "stop_at_clip_layer": -2}}
    prompt["pos2"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["skip", 0]}}
    prompt["area"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["pos2", 0], "width": 64, "height": 64, "x": 0, "y": 0, "strength": 0.5}}
    prompt["both"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["pos", 0],
                                                                      "conditioning_2": ["area", 0]}}
    prompt["cat"] = {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["both", 0],
                                                                    "conditioning_from": ["neg", 0]}}
    prompt["zero"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["neg", 0]}}
    prompt["sample"]["inputs"].update(positive=["cat", 0], negative=["zero", 0])
    out = run(executor, prompt)[2]
    plain = run(executor, txt2img())[2]
    assert torch.isfinite(out["image"]).all()
    assert not torch.allclose(out["latent"]["samples"], plain["latent"]["samples"])


def test_conditioning_values(executor: Executor) -> None:
    import threading

    from engine.context import RunContext
    from nodes.conditioning import (
        CLIPSetLastLayer,
        CLIPTextEncode,
        ConditioningCombine,
        ConditioningConcat,
        ConditioningSetArea,
        ConditioningZeroOut,
    )
    from nodes.model_loaders import CheckpointLoaderSimple

    ctx = RunContext("n", "p", executor.folders, ListSink(), threading.Event(), models=executor.models)
    _, clip, _ = CheckpointLoaderSimple().run(ctx, "tiny-sd1.safetensors")
    [[cond, extras]] = CLIPTextEncode().run(ctx, "a red circle", clip)[0]
    assert cond.shape[0] == 1 and cond.shape[1] == 77 and "pooled_output" in extras
    long = CLIPTextEncode().run(ctx, " ".join(["circle"] * 100), clip)[0]
    assert long[0][0].shape[1] == 154
    skipped = CLIPSetLastLayer().run(ctx, clip, -2)[0]
    [[cond2, _]] = CLIPTextEncode().run(ctx, "a red circle", skipped)[0]
    assert not torch.allclose(cond, cond2)
    combined = ConditioningCombine().run(ctx, [[cond, extras]], long)[0]
    assert len(combined) == 2
    concat = ConditioningConcat().run(ctx, [[cond, extras]], long)[0]
    assert concat[0][0].shape[1] == 77 + 154
    area = ConditioningSetArea().run(ctx, [[cond, extras]], 64, 128, 8, 16, 0.7)[0]
    assert area[0][1]["area"] == (16, 8, 2, 1) and area[0][1]["strength"] == 0.7
    assert "area" not in extras  # inputs are never mutated
    zero = ConditioningZeroOut().run(ctx, [[cond, extras]])[0]
    assert not zero[0][0].any() and not zero[0][1]["pooled_output"].any()
