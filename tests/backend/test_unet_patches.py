"""UNet patches on a tiny real UNet: the patch points, FreeU against its formula on captured block
tensors, deep shrink's resize points, HyperTile and ToMe identity limits and shape invariants, the
attention multipliers against scaled weights, SAG / PAG one step against a hand computation,
removal and composition."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.attention import BasicTransformerBlock, CrossAttention, SpatialTransformer
from engine.backend.attention_guidance import PerturbedAttentionGuidancePatch, SelfAttentionGuidancePatch
from engine.backend.conditioning import ScheduledModel, UNetApply, prepare
from engine.backend.guidance import CFGDenoiser, GuidanceHooks, ParameterizedModel, gather_hooks
from engine.backend.model_sampling import ModelSampling
from engine.backend.token_merging import bipartite_merge
from engine.backend.unet import PatchContext, UNetConfig, UNetModel
from engine.backend.unet_patches import (
    AttentionMultiplyPatch,
    DownscalePatch,
    FreeUPatch,
    HyperTilePatch,
    TomePatch,
    TorchCompilePatch,
    tile_grid,
    tile_tokens,
    untile_tokens,
)

CPU = torch.device("cpu")
BASE = 32
CONFIG = UNetConfig(model_channels=BASE, channel_mult=(1, 2, 4), num_res_blocks=(1, 1, 1),
                    transformer_depth=(1, 1, 1), transformer_depth_middle=1,
                    transformer_depth_output=(1, 1, 1, 1, 1, 1), context_dim=16, num_heads=4)
LATENT = (1, 4, 16, 16)


@pytest.fixture(scope="module")
def unet() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(CONFIG).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas("eps")


def _inputs(t: float = 500.0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(LATENT, generator=g), torch.tensor([t]), torch.randn(1, 5, 16, generator=g)


def _note(store: list[Any], value: Any, result: Any) -> Any:
    """Append ``value`` to ``store`` and return ``result`` (recording patches written as lambdas)."""
    store.append(value)
    return result


def _middle(unet: UNetModel) -> SpatialTransformer:
    return cast(SpatialTransformer, unet.get_submodule("middle_block.1"))


def _ctx(patches: Any, x: Tensor, t: Tensor) -> PatchContext:
    return PatchContext(patches, t, tuple(x.shape), BASE)


def _hooks(*patches: Any, ms: ModelSampling | None = None) -> GuidanceHooks:
    return gather_hooks(patches, ms or ModelSampling.from_betas("eps"))


def _run(unet: UNetModel, hooks: GuidanceHooks, t: float = 500.0) -> Tensor:
    x, ts, context = _inputs(t)
    with torch.inference_mode():
        return unet(x, ts, context, patches=_ctx(hooks.unet_patches, x, ts))


def _plain(unet: UNetModel, t: float = 500.0) -> Tensor:
    x, ts, context = _inputs(t)
    with torch.inference_mode():
        return unet(x, ts, context)


def test_an_empty_patch_context_is_the_plain_forward(unet: UNetModel) -> None:
    assert torch.equal(_run(unet, GuidanceHooks()), _plain(unet))


def test_patch_points_run_in_order_with_the_block_positions(unet: UNetModel) -> None:
    seen: list[tuple[str, Any]] = []
    patches = {
        "input_block_patch": [lambda h, c: _note(seen, ("in", c.block), h)],
        "middle_block_patch": [lambda h, c: _note(seen, ("mid", c.block), h)],
        "output_block_patch": [lambda h, s, c: _note(seen, ("out", c.block), (h, s))],
        "attn1_output_patch": [lambda n, c: _note(seen, ("attn1", (*c.block, c.block_index)), n)],
    }
    x, t, context = _inputs()
    with torch.inference_mode():
        out = unet(x, t, context, patches=_ctx(patches, x, t))
    assert torch.equal(out, _plain(unet))
    assert [b for kind, b in seen if kind == "in"] == [("input", i) for i in range(6)]
    assert [b for kind, b in seen if kind == "out"] == [("output", i) for i in range(6)]
    assert ("mid", ("middle", 0)) in seen
    assert ("attn1", ("middle", 0, 0)) in seen and ("attn1", ("input", 1, 0)) in seen


# ------------------------------------------------------------------------------------------- FreeU


def _capture(store: list[tuple[Tensor, Tensor]]) -> Any:
    def patch(h: Tensor, hsp: Tensor, ctx: PatchContext) -> tuple[Tensor, Tensor]:
        store.append((h.clone(), hsp.clone()))
        return h, hsp
    return patch


def _manual_fourier(x: Tensor, scale: float) -> Tensor:
    """The FreeU filter written out: the 2 x 2 lowest frequencies around the shifted centre scaled."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))
    h, w = x.shape[-2:]
    for row in range(h // 2 - 1, h // 2 + 1):
        for col in range(w // 2 - 1, w // 2 + 1):
            spectrum[..., row, col] *= scale
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real.float()


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_scales_backbone_and_filters_skips_as_the_formula(unet: UNetModel, version: int) -> None:
    before: list[tuple[Tensor, Tensor]] = []
    after: list[tuple[Tensor, Tensor]] = []
    hooks = GuidanceHooks()
    hooks.add_unet_patch("output_block_patch", _capture(before))
    FreeUPatch(1.5, 1.25, 0.5, 0.25, version=version).install(hooks, None)
    hooks.add_unet_patch("output_block_patch", _capture(after))
    out = _run(unet, hooks)
    assert not torch.allclose(out, _plain(unet))
    factors = {BASE * 4: (1.5, 0.5), BASE * 2: (1.25, 0.25)}
    seen = set()
    for (h, hsp), (h_out, hsp_out) in zip(before, after, strict=True):
        if h.shape[1] not in factors:
            assert torch.equal(h_out, h) and torch.equal(hsp_out, hsp)
            continue
        seen.add(h.shape[1])
        b, s = factors[h.shape[1]]
        half = h.shape[1] // 2
        if version == 1:
            factor: Tensor | float = b
        else:
            mean = h.mean(1, keepdim=True)
            low, high = mean.amin(dim=(2, 3), keepdim=True), mean.amax(dim=(2, 3), keepdim=True)
            factor = (b - 1) * (mean - low) / (high - low) + 1
        torch.testing.assert_close(h_out[:, :half], h[:, :half] * factor)
        assert torch.equal(h_out[:, half:], h[:, half:])
        torch.testing.assert_close(hsp_out, _manual_fourier(hsp, s), atol=1e-5, rtol=1e-5)
    assert seen == set(factors)


# ------------------------------------------------------------------------------------------- deep shrink


def _shapes(unet: UNetModel, patch: DownscalePatch, t: float, ms: ModelSampling) -> tuple[list[Any], list[Any], Tensor]:
    hooks = _hooks(patch, ms=ms)
    inputs: list[Any] = []
    outputs: list[Any] = []
    hooks.add_unet_patch("input_block_patch_after_skip", lambda h, c: _note(inputs, tuple(h.shape[-2:]), h))
    hooks.add_unet_patch("output_block_patch",
                         lambda h, s, c: _note(outputs, (tuple(h.shape[-2:]), tuple(s.shape[-2:])), (h, s)))
    return inputs, outputs, _run(unet, hooks, t)


@pytest.mark.parametrize("after_skip", [True, False])
def test_downscale_resizes_block_and_decoder_inside_its_window(unet: UNetModel, ms: ModelSampling,
                                                               after_skip: bool) -> None:
    patch = DownscalePatch(1, 2.0, 0.0, 0.35, after_skip, "bicubic", "bicubic")
    inputs, outputs, out = _shapes(unet, patch, 900.0, ms)
    assert inputs[:3] == [(16, 16), (8, 8), (4, 4)]  # the path after block 1 is halved, and so is what follows
    assert out.shape == LATENT and torch.isfinite(out).all()
    skip_of_block1 = outputs[-2][1]  # output block 4 takes the skip of input block 1
    assert skip_of_block1 == ((16, 16) if after_skip else (8, 8))
    assert not torch.allclose(out, _plain(unet, 900.0))


def test_downscale_outside_its_window_changes_nothing(unet: UNetModel, ms: ModelSampling) -> None:
    patch = DownscalePatch(1, 2.0, 0.0, 0.35, True, "bicubic", "bicubic")
    t_end = float(ms.timestep(torch.tensor(ms.percent_to_sigma(0.35))))
    inputs, _, out = _shapes(unet, patch, t_end - 50, ms)
    assert inputs[:3] == [(16, 16), (16, 16), (8, 8)]
    assert torch.equal(out, _plain(unet, t_end - 50))


# ------------------------------------------------------------------------------------------- HyperTile


def test_hypertile_with_tiles_at_least_the_latent_changes_nothing(unet: UNetModel) -> None:
    assert torch.equal(_run(unet, _hooks(HyperTilePatch(256, 2, 0, False))), _plain(unet))


def test_hypertile_small_tiles_keep_shapes_and_change_the_output(unet: UNetModel) -> None:
    tiles: list[int] = []
    hooks = _hooks(HyperTilePatch(32, 1, 0, False))  # 4 latent pixels: 4 x 4 tiles of the 16 x 16 level
    hooks.add_unet_patch("attn1_patch", lambda n, k, v, c: _note(tiles, n.shape[0], (n, k, v)))
    out = _run(unet, hooks)
    assert out.shape == LATENT and torch.isfinite(out).all()
    assert not torch.allclose(out, _plain(unet))
    assert 16 in tiles  # the full-resolution queries went in as 16 tiles


def test_tile_round_trip_and_grid() -> None:
    x = torch.randn(2, 8 * 12, 5)
    tiled = tile_tokens(x, 2, 3, 8, 12)
    assert tiled.shape == (12, 16, 5)
    assert torch.equal(tiled[1], x[0].view(8, 12, 5)[:4, 4:8].reshape(16, 5))
    assert torch.equal(untile_tokens(tiled, 2, 3, 8, 12), x)
    assert tile_grid(256, 1.0) == (16, 16)
    assert tile_grid(128, 2.0) == (16, 8)


# ------------------------------------------------------------------------------------------- ToMe


def test_tome_ratio_zero_installs_nothing(unet: UNetModel) -> None:
    hooks = _hooks(TomePatch(0.0))
    assert hooks.unet_patches == {}
    assert torch.equal(_run(unet, hooks), _plain(unet))


def test_token_merging_of_identical_neighbours_is_lossless() -> None:
    cells = torch.randn(1, 3, 4, 4)
    x = F.interpolate(cells, scale_factor=2, mode="nearest").flatten(2).transpose(1, 2)  # [1, 64, 3]
    merge, unmerge = bipartite_merge(x, 8, 8, 2, 2, 40, torch.Generator().manual_seed(0))
    merged = merge(x)
    assert merged.shape == (1, 24, 3)
    torch.testing.assert_close(unmerge(merged), x)


def test_tome_keeps_the_shape_and_changes_the_output(unet: UNetModel) -> None:
    out = _run(unet, _hooks(TomePatch(0.5)))
    assert out.shape == LATENT and torch.isfinite(out).all()
    assert not torch.allclose(out, _plain(unet))


# ------------------------------------------------------------------------------------------- multipliers


def _scaled_copy(unet: UNetModel, name: str, factors: tuple[float, float, float, float]) -> UNetModel:
    scaled = copy.deepcopy(unet)
    for module_name, module in scaled.named_modules():
        if module_name.endswith(name):
            for layer, factor in zip((module.to_q, module.to_k, module.to_v, module.to_out[0]), factors, strict=True):
                layer.weight.mul_(factor)
                if layer.bias is not None:
                    layer.bias.mul_(factor)
    return scaled


@pytest.mark.parametrize("name", ["attn1", "attn2"])
def test_attention_multipliers_equal_scaled_weights(unet: UNetModel, name: str) -> None:
    factors = (1.5, 0.5, 2.0, 0.75)
    out = _run(unet, _hooks(AttentionMultiplyPatch(name, *factors)))
    torch.testing.assert_close(out, _plain(_scaled_copy(unet, name, factors)), atol=1e-6, rtol=1e-6)
    assert torch.equal(_run(unet, _hooks(AttentionMultiplyPatch(name, 1.0, 1.0, 1.0, 1.0))), _plain(unet))


def test_two_multipliers_compose_as_their_product(unet: UNetModel) -> None:
    twice = _hooks(AttentionMultiplyPatch("attn1", 2.0, 1.0, 1.0, 1.5),
                   AttentionMultiplyPatch("attn1", 1.5, 1.0, 1.0, 2.0))
    once = _hooks(AttentionMultiplyPatch("attn1", 3.0, 1.0, 1.0, 3.0))
    assert torch.equal(_run(unet, twice), _run(unet, once))


def test_patches_compose_at_one_point_in_install_order(unet: UNetModel) -> None:
    freeu = FreeUPatch(1.5, 1.25, 0.5, 0.25)
    multiply = AttentionMultiplyPatch("attn1", 1.3, 1.0, 1.0, 1.0)
    both = _run(unet, _hooks(freeu, multiply))
    assert not torch.allclose(both, _run(unet, _hooks(freeu)))
    assert not torch.allclose(both, _run(unet, _hooks(multiply)))
    assert torch.equal(both, _run(unet, _hooks(multiply, freeu)))  # different points: order-free


# ------------------------------------------------------------------------------------------- torch.compile


def test_torch_compile_on_cpu_logs_and_changes_nothing(unet: UNetModel, caplog: pytest.LogCaptureFixture) -> None:
    x, t, context = _inputs()
    specs = prepare([[context, {}]], LATENT, device=CPU, dtype=torch.float32)
    hooks = _hooks(TorchCompilePatch("inductor"))
    with caplog.at_level(logging.INFO, logger="engine.backend.unet_patches"):
        apply = UNetApply(unet, patches=hooks.unet_patches)
    assert "TorchCompileModel" in caplog.text and "uncompiled" in caplog.text
    with torch.inference_mode():
        assert torch.equal(apply(x, t, [specs]), UNetApply(unet)(x, t, [specs]))


# ------------------------------------------------------------------------------------------- SAG / PAG


def _denoiser(unet: UNetModel, ms: ModelSampling, hooks: GuidanceHooks, cfg: float = 4.0) -> tuple[CFGDenoiser, Any]:
    g = torch.Generator().manual_seed(5)
    pos = prepare([[torch.randn(1, 5, 16, generator=g), {}]], LATENT, device=CPU, dtype=torch.float32)
    neg = prepare([[torch.randn(1, 5, 16, generator=g), {}]], LATENT, device=CPU, dtype=torch.float32)
    plain_fn = ScheduledModel(ParameterizedModel(UNetApply(unet), ms))
    model_fn = ScheduledModel(ParameterizedModel(UNetApply(unet, patches=hooks.unet_patches), ms))
    denoiser = CFGDenoiser(model_fn, pos, neg, cfg, pre_cfg=hooks.pre_cfg, post_cfg=hooks.post_cfg,
                           needs_uncond=hooks.needs_uncond)
    return denoiser, (plain_fn, pos, neg)


def _step() -> tuple[Tensor, Tensor]:
    return torch.randn(LATENT, generator=torch.Generator().manual_seed(7)) * 3.0, torch.tensor([3.0])


@pytest.mark.parametrize("patch", [SelfAttentionGuidancePatch(0.0, 2.0), PerturbedAttentionGuidancePatch(0.0)])
def test_guidance_at_scale_zero_is_the_plain_model(unet: UNetModel, ms: ModelSampling, patch: Any) -> None:
    hooks = _hooks(patch, ms=ms)
    assert not hooks.post_cfg and not hooks.unet_patches and not hooks.needs_uncond
    denoiser, (plain_fn, pos, neg) = _denoiser(unet, ms, hooks)
    x, sigma = _step()
    with torch.inference_mode():
        assert torch.equal(denoiser(x, sigma), CFGDenoiser(plain_fn, pos, neg, 4.0)(x, sigma))


def _identity_attention(attn: CrossAttention) -> Any:
    def forward(x: Tensor, context: Tensor | None = None) -> Tensor:
        return cast(Tensor, attn.to_out[0](attn.to_v(x)))
    return forward


def _middle_attention_as_identity(unet: UNetModel) -> UNetModel:
    perturbed = copy.deepcopy(unet)
    for block in _middle(perturbed).transformer_blocks:
        attn = cast(BasicTransformerBlock, block).attn1
        attn.forward = _identity_attention(attn)  # type: ignore[method-assign]
    return perturbed


def test_pag_one_step_matches_the_formula(unet: UNetModel, ms: ModelSampling) -> None:
    denoiser, (plain_fn, pos, neg) = _denoiser(unet, ms, _hooks(PerturbedAttentionGuidancePatch(2.5), ms=ms))
    x, sigma = _step()
    perturbed_fn = ScheduledModel(ParameterizedModel(UNetApply(_middle_attention_as_identity(unet)), ms))
    with torch.inference_mode():
        got = denoiser(x, sigma)
        cond, uncond = plain_fn(x, sigma, [pos]), plain_fn(x, sigma, [neg])
        pag_term = (cond - perturbed_fn(x, sigma, [pos])) * 2.5
        expected = uncond + (cond - uncond) * 4.0 + pag_term
    assert pag_term.abs().max() > 1e-2  # the perturbation matters, far above the batching noise below
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def _middle_self_attention_probs(unet: UNetModel, ms: ModelSampling, x: Tensor, sigma: Tensor,
                                 context: Tensor) -> Tensor:
    """Softmax(q k^T / sqrt(d)) of the middle block's first self-attention, per head, by a forward hook."""
    seen: list[Tensor] = []
    attn = cast(BasicTransformerBlock, _middle(unet).transformer_blocks[0]).attn1
    handle = attn.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        unet(ms.calculate_input(sigma, x), ms.timestep(sigma).float(), context)
    finally:
        handle.remove()
    n = seen[0]
    heads, d = attn.heads, n.shape[-1] // attn.heads
    q = attn.to_q(n).view(1, -1, heads, d).transpose(1, 2)
    k = attn.to_k(n).view(1, -1, heads, d).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)[0]  # [heads, N, N]


def _blur(x: Tensor, sigma: float) -> Tensor:
    taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-4, 5)]
    k = torch.tensor(taps) / sum(taps)
    kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 9, 9)
    return F.conv2d(F.pad(x, [4] * 4, mode="reflect"), kernel, groups=x.shape[1])


def test_sag_one_step_matches_the_formula(unet: UNetModel, ms: ModelSampling) -> None:
    scale, blur_sigma = 0.75, 1.5
    denoiser, (plain_fn, pos, neg) = _denoiser(unet, ms, _hooks(SelfAttentionGuidancePatch(scale, blur_sigma), ms=ms))
    x, sigma = _step()
    with torch.inference_mode():
        got = denoiser(x, sigma)
        cond, uncond = plain_fn(x, sigma, [pos]), plain_fn(x, sigma, [neg])
        probs = _middle_self_attention_probs(unet, ms, x, sigma, neg[0].context)
        attended = (probs.mean(0).sum(0) > 1.0).float().reshape(1, 1, 4, 4)  # middle block: 4 x 4 tokens
        mask = attended.repeat_interleave(4, 2).repeat_interleave(4, 3)
        degraded = _blur(uncond, blur_sigma) * mask + uncond * (1 - mask)
        sag = plain_fn(degraded + x - uncond, sigma, [neg])
        expected = uncond + (cond - uncond) * 4.0 + (degraded - sag) * scale
    assert 0 < mask.mean() < 1  # the blur map is neither empty nor everything
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_sag_and_pag_ask_for_the_uncond_pass_at_cfg_one(unet: UNetModel, ms: ModelSampling) -> None:
    hooks = _hooks(SelfAttentionGuidancePatch(0.5, 2.0), PerturbedAttentionGuidancePatch(1.0), ms=ms)
    assert hooks.needs_uncond and len(hooks.post_cfg) == 2
    denoiser, _ = _denoiser(unet, ms, hooks, cfg=1.0)
    x, sigma = _step()
    with torch.inference_mode():
        out = denoiser(x, sigma)
    assert out.shape == LATENT and torch.isfinite(out).all()
