"""SafeLatentDiffusion through the real executor on tiny checkpoints, and its patch's contents.

The guidance maths is checked against diffusers in tests/backend/test_sld.py; here: the node encodes
the concept with the CLIP as CLIPTextEncode does, the presets and "custom" pick the right numbers, the
guidance changes the sampled latent, a scale of 1 leaves it bit for bit, the unpatched MODEL is
untouched, and SDXL (whose concept needs its pooled output for the adm vector) samples too.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.backend.sld import PRESETS, SafeLatentDiffusionPatch, SafetySettings
from engine.context import RunContext
from engine.events import ListSink
from engine.executor import Executor
from nodes.conditioning import CLIPTextEncode
from nodes.model_loaders import CheckpointLoaderSimple
from nodes.safety import DEFAULT_SAFETY_CONCEPT, SafeLatentDiffusion
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import make_executor, run_prompt

CUSTOM: dict[str, Any] = {
    "sld_guidance_scale": 50.0,
    "sld_warmup_steps": 1,
    "sld_threshold": 0.0,
    "sld_momentum_scale": 0.3,
    "sld_mom_beta": 0.4,
}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    for family in ("sd1", "sdxl"):
        build_checkpoint(root / "checkpoints" / f"tiny-{family}.safetensors", family)
    return root


@pytest.fixture
def executor(model_root: Path, tmp_path: Path) -> Executor:
    return make_executor(tmp_path, model_root)


def _prompt(family: str, safety: dict[str, Any] | None) -> dict[str, Any]:
    prompt: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"tiny-{family}.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": 3, "steps": 4, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}},
    }
    if safety is not None:
        prompt["sld"] = {"class_type": "SafeLatentDiffusion", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "safety_concept": "a blue square", "preset": "custom",
            **CUSTOM, **safety}}
        prompt["sample"]["inputs"]["model"] = ["sld", 0]
    return prompt


def _latent(executor: Executor, family: str, safety: dict[str, Any] | None) -> torch.Tensor:
    samples: torch.Tensor = run_prompt(executor, _prompt(family, safety), latent=["sample", 0])["latent"]["samples"]
    assert torch.isfinite(samples).all()
    return samples


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_safety_guidance_changes_the_sample_and_scale_one_changes_nothing(executor: Executor, family: str) -> None:
    plain = _latent(executor, family, None)
    guided = _latent(executor, family, {})
    off = _latent(executor, family, {"sld_guidance_scale": 1.0})
    assert torch.equal(off, plain)
    assert (guided - plain).abs().max() > 1e-3 * plain.abs().max()
    other_concept = _latent(executor, family, {"safety_concept": "a green triangle"})
    assert not torch.equal(other_concept, guided)


def _ctx(executor: Executor) -> RunContext:
    return RunContext("n", "p", executor.folders, ListSink(), threading.Event(), models=executor.models)


def test_the_patch_holds_the_encoded_concept_and_the_chosen_settings(executor: Executor) -> None:
    ctx = _ctx(executor)
    model, clip, _ = CheckpointLoaderSimple().run(ctx, "tiny-sd1.safetensors")
    node = SafeLatentDiffusion()
    (patched,) = node.run(ctx, model, clip, DEFAULT_SAFETY_CONCEPT, "custom", **CUSTOM)
    assert model.sampling_patches == () and len(patched.sampling_patches) == 1
    patch = patched.sampling_patches[0]
    assert isinstance(patch, SafeLatentDiffusionPatch)
    assert patch.settings == SafetySettings(50.0, 1, 0.0, 0.3, 0.4)
    [[concept, extras]] = patch.concept
    [[expected, expected_extras]] = CLIPTextEncode().run(ctx, DEFAULT_SAFETY_CONCEPT, clip)[0]
    assert torch.equal(concept, expected) and torch.equal(extras["pooled_output"], expected_extras["pooled_output"])
    for preset in ("WEAK", "MEDIUM", "STRONG", "MAX"):
        (chosen,) = node.run(ctx, model, clip, "x", preset, **CUSTOM)
        assert chosen.sampling_patches[0].settings == PRESETS[preset]


def test_an_empty_concept_is_refused_with_the_input_named(executor: Executor) -> None:
    ctx = _ctx(executor)
    model, clip, _ = CheckpointLoaderSimple().run(ctx, "tiny-sd1.safetensors")
    with pytest.raises(ValueError, match="SafeLatentDiffusion: input 'safety_concept'"):
        SafeLatentDiffusion().run(ctx, model, clip, "  ", "MEDIUM", **CUSTOM)
