"""The guidance patch nodes: each returns its MODEL with one more patch, and KSampler runs them on the
tiny real SD1 UNet through the real executor (RescaleCFG against its formula, PerpNeg's empty prompt,
DifferentialDiffusion's mask); the unpatched MODEL keeps sampling bit-exactly."""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import torch
from torch import Tensor

from engine.backend.model_sampling import ModelSampling
from engine.cache import OutputCache
from engine.context import RunContext
from engine.events import ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.models.families import ModelFamily
from engine.models.handles import FileRef, ModelHandle
from engine.models.manager import ModelManager
from engine.sdk import guidance
from main import build_registry
from nodes import guidance as nodes
from tests.fixtures.tiny_checkpoints import build_checkpoint

SD1_LATENT_SCALE = 0.18215
SEED = 3
NO_CTX = cast(RunContext, None)  # the guidance nodes never read their context


def handle() -> ModelHandle:
    return ModelHandle(FileRef("m", 1, 1), ModelFamily("sd1", "eps", 4))


@pytest.mark.parametrize(("node", "inputs", "expected"), [
    (nodes.RescaleCFG, {"multiplier": 0.3}, guidance.RescaleCFG(0.3)),
    (nodes.CFGZeroStar, {}, guidance.CFGZeroStar()),
    (nodes.CFGNorm, {"strength": 0.8}, guidance.CFGNorm(0.8)),
    (nodes.APG, {"eta": 0.5, "norm_threshold": 4.0, "momentum": -0.5}, guidance.APG(0.5, 4.0, -0.5)),
    (nodes.TCFG, {}, guidance.TCFG()),
    (nodes.Mahiro, {}, guidance.Mahiro()),
    (nodes.FreSca, {"scale_low": 0.9, "scale_high": 1.3, "freq_cutoff": 5}, guidance.FreSca(0.9, 1.3, 5)),
    (nodes.DifferentialDiffusion, {"strength": 0.6}, guidance.DifferentialDiffusion(0.6)),
    (nodes.DifferentialDiffusion, {}, guidance.DifferentialDiffusion(1.0)),
])
def test_node_adds_one_patch_to_a_new_handle(node: Any, inputs: dict[str, Any], expected: Any) -> None:
    base = handle().with_sampling_patch(guidance.Mahiro())
    (patched,) = node().run(NO_CTX, base, **inputs)
    assert patched.sampling_patches == (guidance.Mahiro(), expected)
    assert base.sampling_patches == (guidance.Mahiro(),)  # the input MODEL is untouched


def test_perp_neg_node_carries_the_empty_conditioning() -> None:
    empty = [[torch.zeros(1, 77, 32), {}]]
    (patched,) = nodes.PerpNeg().run(NO_CTX, handle(), empty, 1.5)
    (patch,) = patched.sampling_patches
    assert isinstance(patch, guidance.PerpNeg)
    assert patch.empty_conditioning is empty and patch.neg_scale == 1.5


# --- KSampler on the tiny real UNet ---------------------------------------------------------------------------

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
    class StubGuidanceOut(Node):
        inputs = (Input("latent", LATENT),)
        output_node = True
        always_run = True  # a fully cached prompt must still report its latent
        last: Any = None

        def run(self, ctx: Any, latent: Any) -> NodeOutput:
            StubGuidanceOut.last = latent
            return NodeOutput(ui={})

    return made


def sample(executor: Executor, *, cfg: float, steps: int = 1, patch: dict[str, Any] | None = None,
           swap_prompts: bool = False, mask: float | None = None) -> Tensor:
    """The latent a KSampler (euler, normal, seed 3) gives, its model optionally through one patch node
    (``patch``: its class_type and widget inputs; the model input is linked here) and optionally on an
    empty latent with a flat noise mask of value ``mask``."""
    pos, neg = ("neg", "pos") if swap_prompts else ("pos", "neg")
    prompt: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty_text": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    model: list[Any] = ["ckpt", 0]
    if patch is not None:
        prompt["patch"] = {"class_type": patch["class_type"], "inputs": {**patch["inputs"], "model": ["ckpt", 0]}}
        model = ["patch", 0]
    latent: list[Any] = ["empty", 0]
    if mask is not None:
        prompt["ramp"] = {"class_type": "SolidMask", "inputs": {"value": mask, "width": 64, "height": 64}}
        prompt["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["empty", 0],
                                                                           "mask": ["ramp", 0]}}
        latent = ["masked", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": SEED, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": model, "positive": [pos, 0], "negative": [neg, 0], "latent_image": latent}}
    prompt["show"] = {"class_type": "StubGuidanceOut", "inputs": {"latent": ["sample", 0]}}
    sink = ListSink()
    outcome = executor.execute(prompt, "p", sink)
    assert outcome.status_str == "success", sink.events[-1]
    return executor.registry.get("StubGuidanceOut").last["samples"]  # type: ignore[union-attr]


def rescale_expected(x: Tensor, sigma: float, cond: Tensor, uncond: Tensor, cfg: float, m: float) -> Tensor:
    """RescaleCFG's result written in ComfyUI's noise-like convention, in float64."""
    x, cond_n, uncond_n = x.double(), x.double() - cond.double(), x.double() - uncond.double()
    xs = x / (sigma**2 + 1.0)
    v_c = (xs - (x - cond_n)) * math.sqrt(sigma**2 + 1.0) / sigma
    v_u = (xs - (x - uncond_n)) * math.sqrt(sigma**2 + 1.0) / sigma
    v_cfg = v_u + cfg * (v_c - v_u)
    v_final = m * v_cfg * (v_c.std() / v_cfg.std()) + (1 - m) * v_cfg
    return x - (x - (xs - v_final * sigma / math.sqrt(sigma**2 + 1.0)))


def test_ksampler_with_rescale_cfg_follows_the_formula(executor: Executor) -> None:
    """One euler step from sigma_max lands on the denoised estimate, so the KSampler's latent is
    RescaleCFG's result on the cond / uncond predictions of cfg-1 runs of each prompt."""
    cond = sample(executor, cfg=1.0) * SD1_LATENT_SCALE
    uncond = sample(executor, cfg=1.0, swap_prompts=True) * SD1_LATENT_SCALE
    sigma_max = float(ModelSampling.from_betas("eps").sigma_max)
    noise = torch.randn(cond.shape, generator=torch.Generator().manual_seed(SEED))  # ComfyUI's seed noise
    x = noise * math.sqrt(1.0 + sigma_max**2)  # the first step's input from an empty latent
    got = sample(executor, cfg=5.0, patch={"class_type": "RescaleCFG", "inputs": {"multiplier": 0.7}})
    expected = rescale_expected(x, sigma_max, cond, uncond, 5.0, 0.7).float() / SD1_LATENT_SCALE
    tolerance = 1e-4 * float(expected.abs().max())  # batched and single forwards round differently
    torch.testing.assert_close(got, expected, rtol=0.0, atol=tolerance)
    plain = uncond / SD1_LATENT_SCALE + (cond - uncond) / SD1_LATENT_SCALE * 5.0
    assert (got - plain).abs().max() > 100 * tolerance  # the rescale mattered


def test_the_unpatched_model_samples_bit_exactly(executor: Executor) -> None:
    before = sample(executor, cfg=5.0, steps=3)
    patched = sample(executor, cfg=5.0, steps=3, patch={"class_type": "RescaleCFG", "inputs": {"multiplier": 1.0}})
    assert not torch.allclose(before, patched, atol=1e-3)
    # the same models, an empty output cache: the plain KSampler really runs again after the patched one
    fresh = Executor(executor.registry, executor.folders, OutputCache(2**30, 1000), executor.models)
    again = sample(fresh, cfg=5.0, steps=3)
    assert again is not before and torch.equal(again, before)
    multiplier_zero = sample(executor, cfg=5.0, steps=3, patch={"class_type": "RescaleCFG",
                                                                "inputs": {"multiplier": 0.0}})
    torch.testing.assert_close(multiplier_zero, before, rtol=0.0, atol=1e-4 * float(before.abs().max()))


def test_perp_neg_runs_its_empty_prompt(executor: Executor) -> None:
    """PerpNeg with neg_scale 0 is CFG around the empty prompt: empty + cfg * (cond - empty)."""
    patch = {"class_type": "PerpNeg", "inputs": {"empty_conditioning": ["empty_text", 0], "neg_scale": 0.0}}
    got = sample(executor, cfg=3.0, patch=patch)
    cond = sample(executor, cfg=1.0)
    empty = sample_empty_prompt(executor)
    expected = empty + 3.0 * (cond - empty)
    tolerance = 1e-4 * float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0.0, atol=tolerance)
    assert (got - sample(executor, cfg=3.0)).abs().max() > 100 * tolerance  # not the plain CFG result


def sample_empty_prompt(executor: Executor) -> Tensor:
    """The one-step cfg-1 latent of the empty prompt: its denoised prediction."""
    prompt: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["pos", 0], "latent_image": ["empty", 0]}},
        "show": {"class_type": "StubGuidanceOut", "inputs": {"latent": ["sample", 0]}},
    }
    sink = ListSink()
    outcome = executor.execute(prompt, "p", sink)
    assert outcome.status_str == "success", sink.events[-1]
    return executor.registry.get("StubGuidanceOut").last["samples"]  # type: ignore[union-attr]


def test_differential_diffusion_thresholds_a_soft_mask_inpaint(executor: Executor) -> None:
    """A full mask (1.0) passes every threshold, so DifferentialDiffusion changes nothing; a flat 0.5
    mask is kept until the schedule's progress reaches it, which plain soft inpainting does not do."""
    dd = {"class_type": "DifferentialDiffusion", "inputs": {"strength": 1.0}}
    assert torch.equal(sample(executor, cfg=5.0, steps=4, mask=1.0, patch=dd), sample(executor, cfg=5.0, steps=4,
                                                                                       mask=1.0))
    plain = sample(executor, cfg=5.0, steps=4, mask=0.5)
    differential = sample(executor, cfg=5.0, steps=4, mask=0.5, patch=dd)
    assert torch.isfinite(differential).all()
    assert not torch.allclose(plain, differential, atol=1e-3)
