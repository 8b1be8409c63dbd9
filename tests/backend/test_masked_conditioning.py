"""Masked, percentage-area and timestep-ranged conditioning in the sampler, as ComfyUI's calc_cond_batch
weighs them: a tiny real UNet for where a masked entry acts, a context-recording fake UNet for when a
ranged entry acts, and ComfyUI's feather ramp and opposite areas written out by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.conditioning import (
    CondSpec,
    ScheduledModel,
    UNetApply,
    entry_weight,
    pair_areas,
    prepare,
)
from engine.backend.guidance import CFGDenoiser, ParameterizedModel
from engine.backend.ksampler import ksample
from engine.backend.model_sampling import ModelSampling
from engine.backend.schedules import sigmas_for
from engine.backend.unet import UNetConfig, UNetModel

CPU = torch.device("cpu")
TINY = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                  transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1), context_dim=16, num_heads=4)
LATENT = (1, 4, 16, 16)


@pytest.fixture(scope="module")
def unet() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(TINY).eval().requires_grad_(False)


def _context(seed: int, tokens: int = 5) -> Tensor:
    return torch.randn(1, tokens, 16, generator=torch.Generator().manual_seed(seed))


def _specs(*entries: tuple[Tensor, dict[str, Any]], ms: ModelSampling | None = None) -> list[CondSpec]:
    return prepare([[c, e] for c, e in entries], LATENT, device=CPU, dtype=torch.float32,
                   percent_to_sigma=None if ms is None else ms.percent_to_sigma)


def _pixel_mask(top: int, left: int, height: int, width: int, size: int = 128) -> Tensor:
    """A binary [1, size, size] image-space mask; blocks on the 8-pixel grid resize exactly to the latent."""
    mask = torch.zeros(1, size, size)
    mask[:, top:top + height, left:left + width] = 1.0
    return mask


def _inputs() -> tuple[Tensor, Tensor]:
    return torch.randn(LATENT, generator=torch.Generator().manual_seed(1)), torch.tensor([500.0])


def test_mask_is_resized_bilinearly_to_the_latent() -> None:
    [spec] = _specs((_context(1), {"mask": _pixel_mask(32, 16, 64, 48), "mask_strength": 0.5}))
    expected = torch.zeros(1, 16, 16)
    expected[:, 4:12, 2:8] = 0.5  # the 8 x 8 pixel blocks, times mask_strength
    torch.testing.assert_close(spec.mask, expected)
    assert spec.area is None  # "default": the whole latent


@pytest.mark.parametrize("mask_strength", [1.0, 0.5])
def test_masked_entry_only_acts_inside_its_mask(unet: UNetModel, mask_strength: float) -> None:
    x, t = _inputs()
    base_ctx, masked_ctx = _context(2), _context(3)
    specs = _specs((base_ctx, {}), (masked_ctx, {"mask": _pixel_mask(32, 16, 64, 48), "mask_strength": mask_strength}))
    apply = UNetApply(unet)
    with torch.inference_mode():
        out = apply(x, t, [specs])
        base = unet(x, t, base_ctx)
        masked = unet(x, t, masked_ctx)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 2:8] = True
    expected = torch.where(inside, (base + masked * mask_strength) / (1 + mask_strength), base)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (out - base)[..., inside].abs().max() > 1e-3  # the masked prompt changed its region


def test_mask_bounds_run_the_entry_on_the_masks_box(unet: UNetModel) -> None:
    x, t = _inputs()
    base_ctx, masked_ctx = _context(4), _context(5)
    mask = _pixel_mask(32, 16, 64, 64)  # latent rows 4..11, cols 2..9
    bounded = _specs((base_ctx, {}), (masked_ctx, {"mask": mask, "set_area_to_bounds": True}))
    assert bounded[1].area == (8, 8, 4, 2)
    manual = _specs((base_ctx, {}), (masked_ctx, {"mask": mask, "area": (8, 8, 4, 2)}))
    with torch.inference_mode():
        out = UNetApply(unet)(x, t, [bounded])
        crop = unet(x[..., 4:12, 2:10], t, masked_ctx)  # the UNet sees only the box
        base = unet(x, t, base_ctx)
        torch.testing.assert_close(out, UNetApply(unet)(x, t, [manual]), rtol=1e-5, atol=1e-5)
    expected = base.clone()
    expected[..., 4:12, 2:10] = (base[..., 4:12, 2:10] + crop) / 2
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_mask_bounds_grow_to_eight_latent_pixels_and_an_empty_mask_weighs_nothing() -> None:
    small, empty = _pixel_mask(40, 40, 16, 8), torch.zeros(1, 128, 128)
    grown, nothing = _specs((_context(6), {"mask": small, "set_area_to_bounds": True}),
                            (_context(6), {"mask": empty, "set_area_to_bounds": True}))
    assert grown.area == (8, 8, 5, 5) and nothing.area == (8, 8, 0, 0)
    assert not entry_weight(nothing, 16, 16, 1, torch.zeros(1)).any()


def _sample(unet: UNetModel, positive: Sequence[CondSpec], negative: Sequence[CondSpec], cfg: float = 5.0,
            steps: int = 3) -> Tensor:
    ms = ModelSampling.from_betas()
    pos, neg = pair_areas(positive, negative)
    denoiser = CFGDenoiser(ScheduledModel(ParameterizedModel(UNetApply(unet), ms)), pos, neg, cfg)
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        return ksample(denoiser, ms, "euler", sigmas_for(ms, "normal", "euler", steps), noise,
                       torch.zeros_like(noise), seed=7)


@pytest.mark.parametrize("set_area_to_bounds", [False, True])
def test_full_ones_mask_equals_no_mask(unet: UNetModel, set_area_to_bounds: bool) -> None:
    ctx, neg = _context(8), _specs((_context(9), {}))
    ones = {"mask": torch.ones(1, 40, 24), "set_area_to_bounds": set_area_to_bounds}  # any size, resized
    masked = _sample(unet, _specs((ctx, ones)), neg)
    plain = _sample(unet, _specs((ctx, {})), neg)
    torch.testing.assert_close(masked, plain, rtol=1e-5, atol=1e-5)
    assert (plain - _sample(unet, _specs((_context(10), {})), neg)).abs().max() > 1e-3  # the prompt matters


def test_percentage_area_resolves_against_the_latent() -> None:
    [spec] = prepare([[_context(1), {"area": ("percentage", 0.5, 0.25, 0.5, 0.75)}]], (1, 4, 16, 32),
                     device=CPU, dtype=torch.float32)
    assert spec.area == (8, 8, 8, 24)
    [rounded] = prepare([[_context(1), {"area": ("percentage", 0.3, 0.3, 0.1, 0.1)}]], (1, 4, 10, 10),
                        device=CPU, dtype=torch.float32)
    assert rounded.area == (3, 3, 1, 1)  # round(3.0), round(1.0)
    with pytest.raises(ValueError, match="percentage"):
        prepare([[_context(1), {"area": ("pixels", 1, 1, 0, 0)}]], LATENT, device=CPU, dtype=torch.float32)


def test_feather_ramp_is_comfyuis() -> None:
    """An area (h 16, w 12) at (8, 0) of a 32 x 32 latent: rows ramp over 16 // 4 = 4 pixels at both inner
    edges, columns over 12 // 4 = 3 at the right edge only (the left one is the latent's border)."""
    weight = entry_weight(CondSpec(_context(1), strength=2.0, area=(16, 12, 8, 0)), 32, 32, 1, torch.zeros(1))
    rows = torch.tensor([1 / 4, 2 / 4, 3 / 4] + [1.0] * 10 + [3 / 4, 2 / 4, 1 / 4])
    cols = torch.tensor([1.0] * 9 + [1.0, 2 / 3, 1 / 3])
    torch.testing.assert_close(weight[0, 0], 2.0 * rows[:, None] * cols[None, :])


def test_pair_areas_gives_each_area_an_opposite_entry() -> None:
    pos_full, pos_area = CondSpec(_context(1)), CondSpec(_context(2), strength=0.7, area=(8, 8, 0, 8),
                                                         sigma_start=5.0)
    neg_full = CondSpec(_context(3))
    pos, neg = pair_areas([pos_full, pos_area], [neg_full])
    assert pos == [pos_full, pos_area] and len(neg) == 2
    copy = neg[1]
    assert copy.context is neg_full.context and copy.area == (8, 8, 0, 8)
    assert copy.strength == 0.7 and copy.sigma_start == 5.0  # everything else is the area entry's
    neg_area = CondSpec(_context(4), area=(8, 8, 0, 8))
    pos2, neg2 = pair_areas([pos_area], [neg_full, neg_area])
    assert neg2 == [neg_full, neg_area]  # an entry of exactly that area is already there
    assert len(pos2) == 1  # and the positive side has no entry to copy from (no full one)


class Recorder:
    """A fake UNet: its output is each sample's context value (contexts are constant tensors), and it
    records the values it saw at every call."""

    def __init__(self) -> None:
        self.calls: list[set[float]] = []

    def __call__(self, x: Tensor, t: Tensor, context: Tensor, y: Tensor | None = None, control: Any = None
                 ) -> Tensor:
        values = context[:, 0, 0]
        self.calls.append({round(float(v), 3) for v in values})
        return values.reshape(-1, 1, 1, 1).expand_as(x).clone()


def _ranged_run(start: float, end: float, steps: int = 10) -> list[set[float]]:
    ms = ModelSampling.from_betas()
    always: tuple[Tensor, dict[str, Any]] = (torch.full((1, 3, 16), 1.0), {})
    ranged = (torch.full((1, 3, 16), 2.0), {"start_percent": start, "end_percent": end})
    recorder = Recorder()
    pos = _specs(always, ranged, ms=ms)
    denoiser = CFGDenoiser(ScheduledModel(ParameterizedModel(UNetApply(recorder), ms)), pos, [], 1.0)  # type: ignore[arg-type]
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(2))
    ksample(denoiser, ms, "euler", sigmas_for(ms, "normal", "euler", steps), noise, torch.zeros_like(noise), seed=2)
    return recorder.calls


def test_timestep_range_switches_the_entry_on_and_off_at_the_expected_steps() -> None:
    """The normal schedule's 10 steps sit at timesteps 999 - 111 i; percent p is timestep 999 (1 - p).
    start 0.5 (timestep 499.5) lets the entry in from step 5 (timestep 444); end 0.3 (timestep 699.3)
    keeps it until step 2 (timestep 777; step 3 is at 666)."""
    late = _ranged_run(0.5, 1.0)
    assert [2.0 in seen for seen in late] == [False] * 5 + [True] * 5
    assert all(1.0 in seen for seen in late)
    early = _ranged_run(0.0, 0.3)
    assert [2.0 in seen for seen in early] == [True] * 3 + [False] * 7
    assert all(2.0 in seen for seen in _ranged_run(0.0, 1.0))  # ComfyUI's defaults: always on


def test_no_active_entry_gives_a_zero_prediction() -> None:
    """As ComfyUI (out / count with nothing added): the cond chunk's denoised estimate is 0, so CFG
    gives uncond * (1 - cfg)."""
    ms = ModelSampling.from_betas()
    model = ScheduledModel(ParameterizedModel(UNetApply(Recorder()), ms))  # type: ignore[arg-type]
    pos = _specs((torch.full((1, 3, 16), 2.0), {"start_percent": 0.5}), ms=ms)
    neg = _specs((torch.full((1, 3, 16), 3.0), {}))
    x, sigma = torch.randn(LATENT), ms.sigma_max.reshape(1)
    out = CFGDenoiser(model, pos, neg, 4.0)(x, sigma)
    uncond = x - 3.0 * sigma  # eps = 3 everywhere
    torch.testing.assert_close(out, uncond * (1 - 4.0), rtol=1e-5, atol=1e-5)


def test_pixels_no_entry_covers_are_zero() -> None:
    """An area entry alone: inside the area its prediction (feathered weights cancel), outside 0."""
    ms = ModelSampling.from_betas()
    model = ScheduledModel(ParameterizedModel(UNetApply(Recorder()), ms))  # type: ignore[arg-type]
    [spec] = _specs((torch.full((1, 3, 16), 2.0), {"area": (8, 8, 0, 0)}))
    x, sigma = torch.randn(LATENT), torch.tensor([1.5])
    out = model(x, sigma, [[spec]])
    torch.testing.assert_close(out[..., :8, :8], x[..., :8, :8] - 2.0 * 1.5, rtol=1e-5, atol=1e-5)
    assert not out[..., 8:, :].any() and not out[..., :, 8:].any()
