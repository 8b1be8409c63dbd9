"""Latent operation nodes: the operations against numpy references of ComfyUI's formulas, applying them to
latents, and LatentApplyOperationCFG's pre-CFG hook, on a fake model and through a tiny real UNet."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from engine.backend.guidance import CFGDenoiser, GuidanceOperation, operation_hooks
from engine.backend.model_sampling import ModelSampling
from engine.cache import OutputCache
from engine.context import RunContext
from engine.events import ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.models.families import ModelFamily
from engine.models.handles import FileRef, ModelHandle
from engine.models.manager import ModelManager
from main import build_registry
from nodes.latent_operations import (
    LatentApplyOperation,
    LatentApplyOperationCFG,
    LatentOperationSharpen,
    LatentOperationTonemapReinhard,
)
from tests.fixtures.tiny_checkpoints import build_checkpoint


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Scale:
    """A test operation: latent x factor."""

    factor: float

    def __call__(self, latent: Tensor, **kwargs: Any) -> Tensor:
        return latent * self.factor


# The operations -----------------------------------------------------------------------------------


def _np_reinhard(latent: np.ndarray, multiplier: float) -> np.ndarray:
    """ComfyUI's formula, literally: (m / top) / (m / top + 1) * top, statistics per item (std unbiased)."""
    x = latent.astype(np.float64)
    m = np.sqrt((x**2).sum(axis=1, keepdims=True)) + 1e-10
    mean = m.mean(axis=(1, 2, 3), keepdims=True)
    std = m.std(axis=(1, 2, 3), keepdims=True, ddof=1)
    top = (std * 5 + mean) * multiplier
    scaled = m / top
    return x / m * (scaled / (scaled + 1.0) * top)


@pytest.mark.parametrize("multiplier", [0.5, 1.0, 3.0])
def test_tonemap_reinhard_formula(ctx: RunContext, multiplier: float) -> None:
    (operation,) = LatentOperationTonemapReinhard().run(ctx, multiplier)
    latent = randn(2, 4, 6, 5) * torch.tensor([1.0, 4.0]).reshape(2, 1, 1, 1)
    out = operation(latent=latent)
    np.testing.assert_allclose(out.numpy(), _np_reinhard(latent.numpy(), multiplier), rtol=1e-5, atol=1e-6)
    # every pixel keeps its direction; no length exceeds top
    cosine = torch.nn.functional.cosine_similarity(out, latent, dim=1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_tonemap_reinhard_multiplier_zero_gives_zeros_not_nan(ctx: RunContext) -> None:
    (operation,) = LatentOperationTonemapReinhard().run(ctx, 0.0)
    assert torch.equal(operation(latent=randn(1, 4, 4, 4)), torch.zeros(1, 4, 4, 4))


def _np_sharpen(latent: np.ndarray, radius: int, sigma: float, alpha: float) -> np.ndarray:
    """Per-pixel length, a reflect-padded correlation of the direction with the unsharp kernel, times the length."""
    x = latent.astype(np.float64)
    lum = np.sqrt((x**2).sum(axis=1, keepdims=True)) + 1e-6
    size = 2 * radius + 1
    axis = np.linspace(-1.0, 1.0, size)
    gauss = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma * sigma))
    kernel = gauss / gauss.sum() * (-10 * alpha)
    kernel[radius, radius] += 1.0 - kernel.sum()
    padded = np.pad(x / lum, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="reflect")
    height, width = x.shape[-2:]
    out = np.zeros_like(x)
    for dy in range(size):
        for dx in range(size):
            out += kernel[dy, dx] * padded[:, :, dy:dy + height, dx:dx + width]
    return lum * out


@pytest.mark.parametrize("radius,sigma,alpha", [(1, 1.0, 0.1), (3, 0.5, 1.5), (5, 2.0, 0.3)])
def test_sharpen_formula(ctx: RunContext, radius: int, sigma: float, alpha: float) -> None:
    (operation,) = LatentOperationSharpen().run(ctx, radius, sigma, alpha)
    latent = randn(2, 4, 9, 11)
    np.testing.assert_allclose(operation(latent=latent).numpy(), _np_sharpen(latent.numpy(), radius, sigma, alpha),
                               rtol=1e-4, atol=1e-5)


def test_sharpen_with_alpha_zero_changes_nothing(ctx: RunContext) -> None:
    (operation,) = LatentOperationSharpen().run(ctx, 2, 1.0, 0.0)
    latent = randn(1, 4, 6, 6)
    torch.testing.assert_close(operation(latent=latent), latent, rtol=1e-5, atol=1e-6)


def test_sharpen_radius_larger_than_the_latent_says_what_to_do(ctx: RunContext) -> None:
    (operation,) = LatentOperationSharpen().run(ctx, 9, 1.0, 0.1)
    with pytest.raises(ValueError, match="sharpen_radius 9.*8x8.*lower sharpen_radius"):
        operation(latent=randn(1, 4, 8, 8))


def test_operations_are_hashable_and_picklable(ctx: RunContext) -> None:
    (tonemap,) = LatentOperationTonemapReinhard().run(ctx, 2.0)
    (sharpen,) = LatentOperationSharpen().run(ctx, 3, 1.0, 0.2)
    for operation in (tonemap, sharpen):
        copy = pickle.loads(pickle.dumps(operation))
        assert copy == operation and hash(copy) == hash(operation)
    latent = randn(1, 4, 8, 8)
    assert torch.equal(pickle.loads(pickle.dumps(sharpen))(latent=latent), sharpen(latent=latent))


def test_apply_operation_keeps_the_other_keys(ctx: RunContext) -> None:
    mask = torch.ones(1, 1, 16, 16)
    samples: dict[str, Any] = {"samples": randn(1, 4, 2, 2), "noise_mask": mask, "batch_index": [3]}
    (out,) = LatentApplyOperation().run(ctx, samples, Scale(-2.0))
    assert torch.equal(out["samples"], samples["samples"] * -2.0)
    assert out["noise_mask"] is mask and out["batch_index"] == [3]


# The pre-CFG hook ---------------------------------------------------------------------------------


def test_apply_operation_cfg_adds_to_a_new_handle(ctx: RunContext, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"x")
    model = ModelHandle(FileRef.of(path), ModelFamily("sd1", "eps", 4))
    (once,) = LatentApplyOperationCFG().run(ctx, model, Scale(2.0))
    (twice,) = LatentApplyOperationCFG().run(ctx, once, Scale(3.0), 0.25, 0.75)
    assert model.pre_cfg == ()
    assert [(p.operation, p.start_percent, p.end_percent) for p in twice.pre_cfg] == [
        (Scale(2.0), 0.0, 1.0), (Scale(3.0), 0.25, 0.75)]
    assert pickle.loads(pickle.dumps(twice)) == twice


def fake_model(x: Tensor, sigma: Tensor, conds: list[float], **kwargs: Any) -> Tensor:
    """Chunk k of the batch 'denoised' to x * 0.5 + conds[k]."""
    return torch.cat([chunk * 0.5 + cond for chunk, cond in zip(x.chunk(len(conds)), conds, strict=True)])


def test_guidance_operation_transforms_cond_minus_uncond() -> None:
    x, sigma = randn(2, 4, 4, 4), torch.full((2,), 3.0)
    tonemap = LatentOperationTonemapReinhard().run(None, 1.0)[0]  # type: ignore[arg-type]
    hook = GuidanceOperation(tonemap, 999999999.9, 0.0)
    out = CFGDenoiser(fake_model, cond=2.0, uncond=-1.0, cfg_scale=6.0, pre_cfg=[hook])(x, sigma)
    cond, uncond = x * 0.5 + 2.0, x * 0.5 - 1.0
    torch.testing.assert_close(out, uncond + tonemap(latent=cond - uncond) * 6.0)


def test_guidance_operation_at_cfg_one_transforms_the_cond_prediction() -> None:
    x, sigma = randn(2, 4, 4, 4), torch.full((2,), 3.0)
    out = CFGDenoiser(fake_model, cond=2.0, uncond=-1.0, cfg_scale=1.0,
                      pre_cfg=[GuidanceOperation(Scale(3.0), 999999999.9, 0.0)])(x, sigma)
    torch.testing.assert_close(out, (x * 0.5 + 2.0) * 3.0)


def test_guidance_operations_chain_in_order_within_their_sigma_windows() -> None:
    x = randn(1, 4, 2, 2)
    hooks = [GuidanceOperation(Scale(2.0), 10.0, 1.0), GuidanceOperation(lambda latent: latent + 1.0, 5.0, 0.0)]
    denoiser = CFGDenoiser(fake_model, cond=2.0, uncond=-1.0, cfg_scale=4.0, pre_cfg=hooks)
    uncond, diff = x * 0.5 - 1.0, torch.full_like(x, 3.0)
    for sigma, expected in ((20.0, diff), (8.0, diff * 2), (3.0, diff * 2 + 1), (0.5, diff + 1)):
        out = denoiser(x, torch.tensor([sigma]))
        torch.testing.assert_close(out, uncond + expected * 4.0, msg=f"sigma {sigma}")


def test_operation_hooks_turn_percents_into_sigmas() -> None:
    ms = ModelSampling.from_betas("eps")
    handle_ops = ModelHandle(FileRef("m", 1, 1), ModelFamily("sd1", "eps", 4)).with_pre_cfg(
        Scale(2.0), 0.0, 1.0).with_pre_cfg(Scale(3.0), 0.5, 0.75).pre_cfg
    hooks = operation_hooks(handle_ops, ms)
    assert hooks[0] == GuidanceOperation(Scale(2.0), 999999999.9, 0.0)
    assert hooks[1].operation == Scale(3.0)
    assert hooks[1].sigma_start == pytest.approx(ms.percent_to_sigma(0.5))
    assert hooks[1].sigma_end == pytest.approx(ms.percent_to_sigma(0.75)) and hooks[1].sigma_end < hooks[1].sigma_start


# Through a tiny real UNet -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    build_checkpoint(root / "checkpoints" / "tiny-sd1.safetensors", "sd1")
    work = tmp_path_factory.mktemp("work")
    folders = Folders(work / "in", work / "out", work / "tmp", (root,))
    folders.ensure()
    made = Executor(build_registry(), folders, OutputCache(2**30, 1000), ModelManager("cpu"))
    from engine.node import Input, Node, NodeOutput
    from engine.types import LATENT

    @made.registry.register
    class StubOperationOut(Node):
        inputs = (Input("latent", LATENT),)
        output_node = True
        last: Any = None

        def run(self, ctx: Any, latent: Any) -> NodeOutput:
            StubOperationOut.last = latent
            return NodeOutput(ui={})

    return made


def sample(executor: Executor, *, cfg: float, steps: int = 1, op: dict[str, Any] | None = None,
           swap_prompts: bool = False, percents: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """The latent a KSampler (euler, seed 3) gives, its model optionally through LatentApplyOperationCFG."""
    pos, neg = ("neg", "pos") if swap_prompts else ("pos", "neg")
    model: list[Any] = ["ckpt", 0]
    prompt: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    if op is not None:
        prompt["op"] = op
        prompt["cfgop"] = {"class_type": "LatentApplyOperationCFG", "inputs": {
            "model": ["ckpt", 0], "operation": ["op", 0], "start_percent": percents[0], "end_percent": percents[1]}}
        model = ["cfgop", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": 3, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": model, "positive": [pos, 0], "negative": [neg, 0], "latent_image": ["empty", 0]}}
    prompt["show"] = {"class_type": "StubOperationOut", "inputs": {"latent": ["sample", 0]}}
    sink = ListSink()
    outcome = executor.execute(prompt, "p", sink)
    assert outcome.status_str == "success", sink.events[-1]
    return executor.registry.get("StubOperationOut").last["samples"]  # type: ignore[union-attr]


def test_identity_like_operation_changes_nothing(executor: Executor) -> None:
    baseline = sample(executor, cfg=5.0, steps=3)
    sharpen_nothing = {"class_type": "LatentOperationSharpen", "inputs": {"sharpen_radius": 2, "sigma": 1.0,
                                                                          "alpha": 0.0}}
    # float rounding only: on a CPU the packed oneDNN kernels round a little differently per batch shape
    torch.testing.assert_close(sample(executor, cfg=5.0, steps=3, op=sharpen_nothing), baseline,
                               rtol=1e-4, atol=1e-4)
    tonemap = {"class_type": "LatentOperationTonemapReinhard", "inputs": {"multiplier": 1.0}}
    assert not torch.allclose(sample(executor, cfg=5.0, steps=3, op=tonemap), baseline, atol=1e-3)
    # outside its window (the second half of the schedule) the operation leaves a one-step run untouched
    assert torch.equal(sample(executor, cfg=5.0, op=tonemap, percents=(0.5, 1.0)), sample(executor, cfg=5.0))


def test_one_step_result_follows_the_formula(executor: Executor) -> None:
    """One euler step from sigma_max lands on the denoised estimate, so the result is
    uncond + tonemap(cond - uncond) * cfg, with cond and uncond from cfg-1 runs of each prompt."""
    cond = sample(executor, cfg=1.0)
    uncond = sample(executor, cfg=1.0, swap_prompts=True)
    tonemap = {"class_type": "LatentOperationTonemapReinhard", "inputs": {"multiplier": 0.5}}
    got = sample(executor, cfg=4.0, op=tonemap)
    # Reinhard's map is positively homogeneous (op(k x) = k op(x)), so the VAE latent scale does not matter
    expected = uncond + torch.from_numpy(_np_reinhard((cond - uncond).numpy(), 0.5)).float() * 4.0
    # the tiny UNet's one-step latents reach a few hundred; batched and single forwards differ in float32 rounding
    tolerance = 1e-5 * float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0.0, atol=tolerance)
    assert (got - (uncond + (cond - uncond) * 4.0)).abs().max() > 100 * tolerance  # the operation mattered
