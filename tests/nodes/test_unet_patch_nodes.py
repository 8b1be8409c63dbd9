"""The UNet patch nodes end to end on the demo model: each patch changes a KSampler run, its identity
settings and its removal give the plain run bit for bit, patches compose, and CLIPAttentionMultiply's
multipliers equal scaled text-encoder weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.executor import Executor
from engine.models.handles import ClipHandle
from nodes.model_loaders import CheckpointLoaderSimple
from nodes.unet_patches import CLIPAttentionMultiply
from tests.nodes.sd_workflow import (
    DEMO_CHECKPOINT,
    DEMO_MODELS,
    make_executor,
    node_context,
    require_demo_model,
    run_prompt,
)

Patch = tuple[str, dict[str, Any]]

CHANGING: list[Patch] = [
    ("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),
    ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),
    ("PatchModelAddDownscale", {"block_number": 1, "downscale_factor": 2.0, "start_percent": 0.0, "end_percent": 1.0,
                                "downscale_after_skip": True, "downscale_method": "bicubic",
                                "upscale_method": "bicubic"}),
    ("HyperTile", {"tile_size": 32, "swap_size": 1, "max_depth": 0, "scale_depth": False}),
    ("TomePatchModel", {"ratio": 0.5}),
    ("UNetSelfAttentionMultiply", {"q": 2.0, "k": 1.0, "v": 1.0, "out": 1.0}),
    ("UNetCrossAttentionMultiply", {"q": 1.0, "k": 1.0, "v": 1.5, "out": 1.0}),
    ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
    ("PerturbedAttentionGuidance", {"scale": 3.0}),
]
IDENTITY: list[Patch] = [
    ("HyperTile", {"tile_size": 256, "swap_size": 2, "max_depth": 0, "scale_depth": False}),
    ("TomePatchModel", {"ratio": 0.0}),
    ("UNetSelfAttentionMultiply", {"q": 1.0, "k": 1.0, "v": 1.0, "out": 1.0}),
    ("UNetCrossAttentionMultiply", {"q": 1.0, "k": 1.0, "v": 1.0, "out": 1.0}),
    ("SelfAttentionGuidance", {"scale": 0.0, "blur_sigma": 2.0}),
    ("PerturbedAttentionGuidance", {"scale": 0.0}),
    ("TorchCompileModel", {"backend": "inductor"}),  # CPU: a log line, the plain UNet
]


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    require_demo_model()
    return make_executor(tmp_path_factory.mktemp("unet_patches"), DEMO_MODELS)


def _prompt(*patches: Patch) -> dict[str, Any]:
    graph: dict[str, Any] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}}}
    model: list[Any] = ["ckpt", 0]
    for index, (class_type, inputs) in enumerate(patches):
        graph[f"patch{index}"] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [f"patch{index}", 0]
    graph["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}}
    graph["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": ["ckpt", 1]}}
    graph["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}}
    return graph


def _sample(executor: Executor, *patches: Patch) -> torch.Tensor:
    return run_prompt(executor, _prompt(*patches), latent=["sample", 0])["latent"]["samples"].clone()


@pytest.fixture(scope="module")
def plain(executor: Executor) -> torch.Tensor:
    return _sample(executor)


@pytest.mark.parametrize("patch", CHANGING, ids=[name for name, _ in CHANGING])
def test_each_patch_changes_the_run_and_removing_it_restores_it(executor: Executor, plain: torch.Tensor,
                                                                patch: Patch) -> None:
    patched = _sample(executor, patch)
    assert torch.isfinite(patched).all()
    assert not torch.allclose(patched, plain, atol=1e-5)
    executor.cache.clear()
    assert torch.equal(_sample(executor), plain)


@pytest.mark.parametrize("patch", IDENTITY, ids=[name for name, _ in IDENTITY])
def test_identity_settings_give_the_plain_run_bit_for_bit(executor: Executor, plain: torch.Tensor,
                                                           patch: Patch) -> None:
    assert torch.equal(_sample(executor, patch), plain)


def test_two_patches_compose(executor: Executor, plain: torch.Tensor) -> None:
    freeu, pag = CHANGING[0], CHANGING[-1]
    both = _sample(executor, freeu, pag)
    assert not torch.allclose(both, _sample(executor, freeu), atol=1e-5)
    assert not torch.allclose(both, _sample(executor, pag), atol=1e-5)


def _encode_with_scaled_weights(encoder: Any, tokens: Any, factors: dict[str, float]) -> tuple[torch.Tensor, ...]:
    """The reference: the encoder's projection weights scaled in place for one encode, then put back."""
    saved = {}
    try:
        for name, parameter in encoder.named_parameters():
            for projection, factor in factors.items():
                if f"self_attn.{projection}." in name:
                    saved[name] = parameter.clone()
                    parameter.mul_(factor)
        return tuple(encoder.encode(tokens))
    finally:
        for name, parameter in encoder.named_parameters():
            if name in saved:
                parameter.copy_(saved[name])


def test_clip_attention_multiply_equals_scaled_encoder_weights(executor: Executor) -> None:
    ctx = node_context(executor)
    clip: ClipHandle = CheckpointLoaderSimple().run(ctx, ckpt_name=DEMO_CHECKPOINT)[1]
    (scaled_clip,) = CLIPAttentionMultiply().run(ctx, clip=clip, q=1.5, k=0.5, v=2.0, out=0.75)
    assert scaled_clip.attention_scale == (1.5, 0.5, 2.0, 0.75) and clip.attention_scale == (1.0, 1.0, 1.0, 1.0)
    encoder = executor.models.text_encoder(clip)
    tokens = encoder.tokenize("a red circle")
    factors = {"q_proj": 1.5, "k_proj": 0.5, "v_proj": 2.0, "out_proj": 0.75}
    with torch.inference_mode():
        plain_cond, _ = encoder.encode(tokens)
        cond, pooled = encoder.encode(tokens, attention_scale=scaled_clip.attention_scale)
        again, _ = encoder.encode(tokens)
        expected, expected_pooled = _encode_with_scaled_weights(encoder, tokens, factors)
    torch.testing.assert_close(cond, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cond, plain_cond, atol=1e-4)
    assert torch.equal(again, plain_cond)  # the stored weights were not touched


def test_patch_objects_are_picklable_and_hashable(tmp_path: Path) -> None:
    import pickle

    from engine.sdk import unet_patches

    patches = [unet_patches.FreeUPatch(1.1, 1.2, 0.9, 0.2), unet_patches.HyperTilePatch(256, 2, 0, False),
               unet_patches.SelfAttentionGuidancePatch(0.5, 2.0), unet_patches.PerturbedAttentionGuidancePatch(3.0),
               unet_patches.TorchCompilePatch("inductor"), unet_patches.TomePatch(0.3)]
    for patch in patches:
        assert pickle.loads(pickle.dumps(patch)) == patch
        hash(patch)
