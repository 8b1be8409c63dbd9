"""Latent transform nodes on real tensors, against numpy references written from ComfyUI's behaviour."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.context import RunContext
from nodes.latent_transform import (
    LatentBatchSeedBehavior,
    LatentBlend,
    LatentCompositeMasked,
    LatentConcat,
    LatentCrop,
    LatentCut,
    LatentFlip,
    LatentInterpolate,
    LatentRotate,
    LatentSubtract,
    RebatchLatents,
)

Latent = dict[str, Any]


def latent(*shape: int, seed: int = 0, **extra: Any) -> Latent:
    return {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(seed)), **extra}


def np_of(value: Latent) -> np.ndarray:
    return value["samples"].numpy()


# Rotate, flip, crop -------------------------------------------------------------------------------


def _clockwise(a: np.ndarray) -> np.ndarray:
    """A quarter turn clockwise by index arithmetic: out[i, j] = a[H - 1 - j, i]."""
    height, width = a.shape[-2:]
    rows = (height - 1 - np.arange(height))[None, :].repeat(width, 0)  # out row i, col j -> a row H-1-j
    cols = np.arange(width)[:, None].repeat(height, 1)  # -> a col i
    return a[..., rows, cols]


@pytest.mark.parametrize("rotation,turns", [("none", 0), ("90 degrees", 1), ("180 degrees", 2), ("270 degrees", 3)])
def test_rotate_turns_clockwise(ctx: RunContext, rotation: str, turns: int) -> None:
    source = latent(2, 4, 3, 5, noise_mask=torch.ones(1, 1, 24, 40), batch_index=[4, 5])
    (out,) = LatentRotate().run(ctx, source, rotation)
    expected = np_of(source)
    for _ in range(turns):
        expected = _clockwise(expected)
    np.testing.assert_array_equal(np_of(out), expected)
    assert out["noise_mask"] is source["noise_mask"] and out["batch_index"] == [4, 5]  # kept, as ComfyUI


def test_rotate_90_moves_the_top_left_corner_to_the_top_right(ctx: RunContext) -> None:
    samples = torch.zeros(1, 1, 2, 3)
    samples[0, 0, 0, 0] = 1.0
    (out,) = LatentRotate().run(ctx, {"samples": samples}, "90 degrees")
    assert out["samples"].shape == (1, 1, 3, 2) and out["samples"][0, 0, 0, 1] == 1.0


def test_flip(ctx: RunContext) -> None:
    source = latent(1, 4, 3, 5)
    (vertical,) = LatentFlip().run(ctx, source, "x-axis: vertically")
    (horizontal,) = LatentFlip().run(ctx, source, "y-axis: horizontally")
    np.testing.assert_array_equal(np_of(vertical), np_of(source)[:, :, ::-1, :])
    np.testing.assert_array_equal(np_of(horizontal), np_of(source)[:, :, :, ::-1])


@pytest.mark.parametrize("size,x,y,rows,cols", [
    ((64, 32), 24, 8, (1, 5), (3, 11)),        # (width, height) pixels at (x, y): latent rows 1..5, cols 3..11
    ((128, 512), 200, 0, (0, 12), (8, 16)),    # x pulled back to width - 8, the region cut at the edge
    ((64, 64), 0, 96, (4, 12), (0, 8)),        # y = 12 pulled back to 12 - 8 = 4
])
def test_crop(ctx: RunContext, size: tuple[int, int], x: int, y: int, rows: tuple[int, int],
              cols: tuple[int, int]) -> None:
    source = latent(2, 4, 12, 16)
    (out,) = LatentCrop().run(ctx, source, size[0], size[1], x, y)
    np.testing.assert_array_equal(np_of(out), np_of(source)[:, :, rows[0]:rows[1], cols[0]:cols[1]])


def test_crop_of_a_latent_smaller_than_64_pixels_starts_at_0(ctx: RunContext) -> None:
    source = latent(1, 4, 4, 4)
    (out,) = LatentCrop().run(ctx, source, 64, 64, 16, 16)
    np.testing.assert_array_equal(np_of(out), np_of(source))


# Blend, subtract, interpolate ---------------------------------------------------------------------


def test_blend_formula(ctx: RunContext) -> None:
    a, b = latent(2, 4, 6, 6, seed=1), latent(2, 4, 6, 6, seed=2)
    (out,) = LatentBlend().run(ctx, a, b, 0.3)
    np.testing.assert_allclose(np_of(out), np_of(a) * 0.3 + np_of(b) * 0.7, rtol=1e-6, atol=1e-6)


def test_blend_resizes_samples2_bicubic_and_broadcasts_a_single_latent(ctx: RunContext) -> None:
    a, b = latent(3, 4, 6, 8, seed=1), latent(1, 4, 3, 4, seed=2)
    (out,) = LatentBlend().run(ctx, a, b, 0.25)
    resized = F.interpolate(b["samples"], size=(6, 8), mode="bicubic").numpy()
    np.testing.assert_allclose(np_of(out), np_of(a) * 0.25 + resized * 0.75, rtol=1e-5, atol=1e-6)


def test_blend_refuses_batches_that_cannot_broadcast(ctx: RunContext) -> None:
    with pytest.raises(ValueError, match="LatentBlend.*2 and 3 items"):
        LatentBlend().run(ctx, latent(2, 4, 4, 4), latent(3, 4, 4, 4), 0.5)


def test_subtract_repeats_and_resizes(ctx: RunContext) -> None:
    a, b = latent(2, 4, 6, 6, seed=1, batch_index=[3, 4]), latent(1, 4, 6, 6, seed=2)
    (out,) = LatentSubtract().run(ctx, a, b)
    np.testing.assert_allclose(np_of(out), np_of(a) - np_of(b), rtol=1e-6, atol=1e-6)
    assert out["batch_index"] == [3, 4]
    (resized,) = LatentSubtract().run(ctx, a, latent(2, 4, 3, 3, seed=2))
    assert resized["samples"].shape == (2, 4, 6, 6)


def _np_interpolate(s1: np.ndarray, s2: np.ndarray, ratio: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = np.sqrt((s1.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
        m2 = np.sqrt((s2.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
        mixed = np.nan_to_num(s1 / m1) * ratio + np.nan_to_num(s2 / m2) * (1 - ratio)
        direction = np.nan_to_num(mixed / np.sqrt((mixed**2).sum(axis=1, keepdims=True)))
    return direction * (m1 * ratio + m2 * (1 - ratio))


@pytest.mark.parametrize("ratio", [0.0, 0.35, 1.0])
def test_interpolate_is_norm_preserving(ctx: RunContext, ratio: float) -> None:
    a, b = latent(2, 4, 5, 5, seed=1), latent(2, 4, 5, 5, seed=2)
    a["samples"][0, :, 0, 0] = 0.0  # a zero vector has no direction: 0/0 counts as 0
    (out,) = LatentInterpolate().run(ctx, a, b, ratio)
    assert torch.isfinite(out["samples"]).all()
    np.testing.assert_allclose(np_of(out), _np_interpolate(np_of(a), np_of(b), ratio), rtol=1e-5, atol=1e-6)
    norms = np.linalg.norm(np_of(out), axis=1)
    expected = np.linalg.norm(np_of(a), axis=1) * ratio + np.linalg.norm(np_of(b), axis=1) * (1 - ratio)
    np.testing.assert_allclose(norms[:, 1:, 1:], expected[:, 1:, 1:], rtol=1e-5)


def test_interpolate_ends_give_each_latent(ctx: RunContext) -> None:
    a, b = latent(1, 4, 5, 5, seed=1), latent(1, 4, 5, 5, seed=2)
    np.testing.assert_allclose(np_of(LatentInterpolate().run(ctx, a, b, 1.0)[0]), np_of(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_of(LatentInterpolate().run(ctx, a, b, 0.0)[0]), np_of(b), rtol=1e-5, atol=1e-6)


# Concat and cut -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,axis,reverse", [
    ("x", 3, False), ("-x", 3, True), ("y", 2, False), ("-y", 2, True), ("t", 1, False), ("-t", 1, True),
])
def test_concat_along_each_dim(ctx: RunContext, dim: str, axis: int, reverse: bool) -> None:
    a = latent(2, 4, 6, 6, seed=1, noise_mask=torch.zeros(1, 1, 48, 48))
    b = latent(1, 4, 6, 6, seed=2)  # a single latent is repeated to samples1's batch
    (out,) = LatentConcat().run(ctx, a, b, dim)
    second = np.repeat(np_of(b), 2, axis=0)
    parts = (second, np_of(a)) if reverse else (np_of(a), second)
    np.testing.assert_array_equal(np_of(out), np.concatenate(parts, axis=axis))
    assert out["noise_mask"] is a["noise_mask"]


def test_concat_of_mismatched_sizes_names_the_shapes(ctx: RunContext) -> None:
    with pytest.raises(ValueError, match=r"LatentConcat.*\(1, 4, 6, 6\).*\(1, 4, 5, 5\)"):
        LatentConcat().run(ctx, latent(1, 4, 6, 6), latent(1, 4, 5, 5), "x")


@pytest.mark.parametrize("index,amount,start,stop", [
    (2, 3, 2, 5), (0, 100, 0, 8), (10, 3, 7, 8),   # an index past the end keeps the last pixel
    (-3, 5, 5, 8), (-3, 2, 5, 7), (-20, 2, 0, 2),  # negative counts from the end, clamped to the start
])
@pytest.mark.parametrize("dim,axis", [("x", 3), ("y", 2), ("t", 1)])
def test_cut(ctx: RunContext, dim: str, axis: int, index: int, amount: int, start: int, stop: int) -> None:
    source = latent(2, 8, 8, 8)
    (out,) = LatentCut().run(ctx, source, dim, index, amount)
    np.testing.assert_array_equal(np_of(out), np.take(np_of(source), np.arange(start, stop), axis=axis))


# Seed behaviour -----------------------------------------------------------------------------------


def test_seed_behavior(ctx: RunContext) -> None:
    indexed = latent(3, 4, 2, 2, batch_index=[5, 6, 7])
    (fixed,) = LatentBatchSeedBehavior().run(ctx, indexed, "fixed")
    assert fixed["batch_index"] == [5, 5, 5]
    (fresh,) = LatentBatchSeedBehavior().run(ctx, latent(3, 4, 2, 2), "fixed")
    assert fresh["batch_index"] == [0, 0, 0]
    (random,) = LatentBatchSeedBehavior().run(ctx, indexed, "random")
    assert "batch_index" not in random and torch.equal(random["samples"], indexed["samples"])
    assert indexed["batch_index"] == [5, 6, 7]  # the input is not mutated


# Rebatch ------------------------------------------------------------------------------------------


def test_rebatch_cuts_runs_of_equal_size(ctx: RunContext) -> None:
    first, second, third = latent(3, 4, 8, 8, seed=1), latent(2, 4, 8, 8, seed=2), latent(1, 4, 4, 4, seed=3)
    out = RebatchLatents().run(ctx, [first, second, third], [2])[0]
    joined = torch.cat([first["samples"], second["samples"]])
    assert [o["samples"].shape[0] for o in out] == [2, 2, 1, 1]
    for got, want in zip(out[:3], (joined[0:2], joined[2:4], joined[4:5]), strict=True):
        assert torch.equal(got["samples"], want)
    assert torch.equal(out[3]["samples"], third["samples"])  # a size change starts a new batch
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 3], [4], [5]]
    assert all("noise_mask" not in o for o in out)  # no input had a mask


def test_rebatch_keeps_batch_indices_and_noise_masks(ctx: RunContext) -> None:
    pattern = torch.zeros(1, 1, 64, 64)
    pattern[..., 8:40, 16:48] = 1.0
    small_mask = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(4))  # [B, H, W], not pixel-sized
    first = latent(3, 4, 8, 8, seed=1)
    second = latent(2, 4, 8, 8, seed=2, batch_index=[10, 11], noise_mask=pattern)
    third = latent(2, 4, 8, 8, seed=3, noise_mask=small_mask)
    out = RebatchLatents().run(ctx, [first, second, third], [4])[0]
    assert [o["batch_index"] for o in out] == [[0, 1, 2, 10], [11, 5, 6]]
    ones = torch.ones(1, 1, 64, 64)
    assert torch.equal(out[0]["noise_mask"], torch.cat([ones, ones, ones, pattern]))
    resized = F.interpolate(small_mask[:, None], size=(64, 64), mode="bilinear")
    torch.testing.assert_close(out[1]["noise_mask"], torch.cat([pattern, resized, resized]))


def test_rebatch_of_nothing_and_batch_size_larger_than_everything(ctx: RunContext) -> None:
    assert RebatchLatents().run(ctx, [], [4])[0] == []
    items = [latent(1, 4, 8, 8, seed=s) for s in range(3)]
    (out,) = RebatchLatents().run(ctx, items, [64])
    assert len(out) == 1 and torch.equal(out[0]["samples"], torch.cat([i["samples"] for i in items]))


# Composite masked ---------------------------------------------------------------------------------


def _np_composite(dest: np.ndarray, src: np.ndarray, left: int, top: int, mask: np.ndarray | None) -> np.ndarray:
    """Paste src (already batched like dest) at (left, top) latent pixels through a latent-sized mask."""
    out = dest.copy()
    height = max(0, min(src.shape[2], dest.shape[2] - top))
    width = max(0, min(src.shape[3], dest.shape[3] - left))
    weight = np.ones_like(src) if mask is None else np.broadcast_to(mask, src.shape)
    region = out[:, :, top:top + height, left:left + width]
    w = weight[:, :, :height, :width]
    out[:, :, top:top + height, left:left + width] = src[:, :, :height, :width] * w + region * (1 - w)
    return out


def test_composite_masked_without_a_mask_pastes_and_cuts_at_the_edge(ctx: RunContext) -> None:
    dest, src = latent(2, 4, 8, 8, seed=1, batch_index=[7, 8]), latent(1, 4, 4, 4, seed=2)
    (out,) = LatentCompositeMasked().run(ctx, dest, src, 16, 40, False)
    expected = _np_composite(np_of(dest), np.repeat(np_of(src), 2, axis=0), 2, 5, None)
    np.testing.assert_array_equal(np_of(out), expected)
    assert out["batch_index"] == [7, 8] and not torch.equal(out["samples"], dest["samples"])
    assert torch.equal(dest["samples"], latent(2, 4, 8, 8, seed=1)["samples"])  # the input is untouched


def test_composite_masked_through_a_pixel_mask(ctx: RunContext) -> None:
    dest, src = latent(1, 4, 8, 8, seed=1), latent(1, 4, 4, 4, seed=2)
    blocks = np.array([[1.0, 0.0, 0.5, 0.25]] * 4, dtype=np.float32)  # per latent pixel of the source
    pixel_mask = torch.from_numpy(np.kron(blocks, np.ones((8, 8), dtype=np.float32)))[None]  # [1, 32, 32]
    (out,) = LatentCompositeMasked().run(ctx, dest, src, 8, 8, False, pixel_mask)
    # constant 8x8 blocks survive a bilinear resize to 4x4 exactly
    expected = _np_composite(np_of(dest), np_of(src), 1, 1, blocks[None, None])
    np.testing.assert_allclose(np_of(out), expected, rtol=1e-6, atol=1e-6)


def test_composite_masked_resize_source(ctx: RunContext) -> None:
    dest, src = latent(2, 4, 8, 8, seed=1), latent(1, 4, 4, 4, seed=2)
    mask = torch.ones(1, 64, 64)
    mask[:, :, :32] = 0.0  # keep the destination's left half
    (out,) = LatentCompositeMasked().run(ctx, dest, src, 0, 0, True, mask)
    resized = np.repeat(F.interpolate(src["samples"], size=(8, 8), mode="bilinear").numpy(), 2, axis=0)
    weight = F.interpolate(mask[:, None], size=(8, 8), mode="bilinear").numpy()
    expected = _np_composite(np_of(dest), resized, 0, 0, weight)
    np.testing.assert_allclose(np_of(out), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np_of(out)[..., :4], np_of(dest)[..., :4])


def test_composite_masked_refuses_other_channel_counts(ctx: RunContext) -> None:
    with pytest.raises(ValueError, match="LatentCompositeMasked.*4 and 16 channels"):
        LatentCompositeMasked().run(ctx, latent(1, 4, 8, 8), latent(1, 16, 8, 8), 0, 0, False)
