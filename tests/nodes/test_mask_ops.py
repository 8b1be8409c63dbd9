"""FeatherMask, MaskComposite, CropMask, ImageColorToMask and MaskPreview on real tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.backend.mask_ops import MASK_OPERATIONS as BACKEND_OPERATIONS
from engine.context import RunContext
from nodes.masks import MASK_OPERATIONS, CropMask, FeatherMask, ImageColorToMask, MaskComposite, MaskPreview

# --- FeatherMask ------------------------------------------------------------------------------


def _feather_reference(mask: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """ComfyUI's loops, step by step (right/bottom step k scales index -k, so index 0 for k = 0)."""
    out = mask.astype(np.float64).copy()
    height, width = out.shape[-2:]
    left, right, top, bottom = min(left, width), min(right, width), min(top, height), min(bottom, height)
    for x in range(left):
        out[:, :, x] *= (x + 1) / left
    for x in range(right):
        out[:, :, -x] *= (x + 1) / right
    for y in range(top):
        out[:, y, :] *= (y + 1) / top
    for y in range(bottom):
        out[:, -y, :] *= (y + 1) / bottom
    return out


def test_left_and_top_ramps_rise_linearly(ctx: RunContext) -> None:
    (out,) = FeatherMask().run(ctx, mask=torch.ones(1, 6, 8), left=4, top=2, right=0, bottom=0)
    assert torch.allclose(out[0, 5, :5], torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0]))
    assert torch.allclose(out[0, :3, 7], torch.tensor([0.5, 1.0, 1.0]))
    assert float(out[0, 0, 0]) == pytest.approx(0.25 * 0.5)


def test_right_ramp_is_comfyuis(ctx: RunContext) -> None:
    (out,) = FeatherMask().run(ctx, mask=torch.ones(1, 1, 8), left=0, top=0, right=4, bottom=0)
    # step 0 scales column 0 (index -0); the last column gets 2/4; column 8-3 = 5 gets 4/4.
    assert torch.allclose(out[0, 0], torch.tensor([0.25, 1, 1, 1, 1, 1.0, 0.75, 0.5]))


@pytest.mark.parametrize("sides", [(0, 0, 0, 0), (3, 1, 2, 4), (20, 20, 20, 20), (1, 0, 1, 0), (5, 5, 5, 5)])
def test_feather_matches_comfyuis_loops(ctx: RunContext, sides: tuple[int, int, int, int]) -> None:
    mask = torch.rand(2, 9, 11, generator=torch.Generator().manual_seed(3))
    (out,) = FeatherMask().run(ctx, mask=mask, left=sides[0], top=sides[1], right=sides[2], bottom=sides[3])
    np.testing.assert_allclose(out.numpy(), _feather_reference(mask.numpy(), *sides), rtol=1e-6, atol=1e-7)


def test_feather_accepts_a_2d_mask_and_leaves_its_input(ctx: RunContext) -> None:
    mask = torch.ones(4, 4)
    (out,) = FeatherMask().run(ctx, mask=mask, left=2, top=0, right=0, bottom=0)
    assert out.shape == (1, 4, 4) and torch.equal(mask, torch.ones(4, 4))


# --- MaskComposite ----------------------------------------------------------------------------


def test_node_lists_the_backend_operations() -> None:
    assert MASK_OPERATIONS == BACKEND_OPERATIONS


def _composite_reference(dst: np.ndarray, src: np.ndarray, x: int, y: int, operation: str) -> np.ndarray:
    out = dst.copy()
    h = min(src.shape[-2], dst.shape[-2] - y)
    w = min(src.shape[-1], dst.shape[-1] - x)
    d, s = out[:, y:y + h, x:x + w], src[:, :h, :w]
    bd, bs = np.round(d) != 0, np.round(s) != 0
    out[:, y:y + h, x:x + w] = {
        "multiply": d * s, "add": d + s, "subtract": d - s,
        "and": (bd & bs).astype(np.float32), "or": (bd | bs).astype(np.float32), "xor": (bd ^ bs).astype(np.float32),
    }[operation]
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize("operation", MASK_OPERATIONS)
@pytest.mark.parametrize(("x", "y"), [(0, 0), (3, 2), (6, 4)])
def test_mask_composite_operations(ctx: RunContext, operation: str, x: int, y: int) -> None:
    gen = torch.Generator().manual_seed(7)
    dst = torch.rand(2, 6, 8, generator=gen) * 1.4 - 0.2  # values outside 0..1 get clamped everywhere
    src = torch.rand(2, 4, 5, generator=gen)
    (out,) = MaskComposite().run(ctx, destination=dst, source=src, x=x, y=y, operation=operation)
    assert out.shape == (2, 6, 8)
    np.testing.assert_allclose(out.numpy(), _composite_reference(dst.numpy(), src.numpy(), x, y, operation),
                               atol=1e-7)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_add_and_subtract_clamp(ctx: RunContext) -> None:
    dst, src = torch.full((1, 2, 2), 0.75), torch.full((1, 2, 2), 0.5)
    (added,) = MaskComposite().run(ctx, destination=dst, source=src, x=0, y=0, operation="add")
    (taken,) = MaskComposite().run(ctx, destination=src, source=dst, x=0, y=0, operation="subtract")
    assert torch.equal(added, torch.ones(1, 2, 2)) and torch.equal(taken, torch.zeros(1, 2, 2))


def test_logic_rounds_half_to_even(ctx: RunContext) -> None:
    dst = torch.tensor([[[0.5, 0.51, 1.0, 0.0]]])
    src = torch.tensor([[[1.0, 1.0, 0.49, 0.0]]])
    (out,) = MaskComposite().run(ctx, destination=dst, source=src, x=0, y=0, operation="or")
    assert out.tolist() == [[[1.0, 1.0, 1.0, 0.0]]]
    (out,) = MaskComposite().run(ctx, destination=dst, source=src, x=0, y=0, operation="and")
    assert out.tolist() == [[[0.0, 1.0, 0.0, 0.0]]]  # 0.5 rounds to 0


def test_source_outside_leaves_destination(ctx: RunContext) -> None:
    dst = torch.rand(1, 4, 4)
    (out,) = MaskComposite().run(ctx, destination=dst, source=torch.ones(1, 2, 2), x=10, y=0, operation="add")
    assert torch.equal(out, dst)


def test_single_source_applies_to_every_destination_mask(ctx: RunContext) -> None:
    dst = torch.ones(3, 2, 2)
    (out,) = MaskComposite().run(ctx, destination=dst, source=torch.zeros(2, 2), x=0, y=0, operation="multiply")
    assert torch.equal(out, torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="batch"):
        MaskComposite().run(ctx, destination=torch.ones(3, 2, 2), source=torch.ones(2, 2, 2), x=0, y=0,
                            operation="add")


# --- CropMask ---------------------------------------------------------------------------------


def test_crop_is_exact(ctx: RunContext) -> None:
    mask = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(2, 6, 8)
    (out,) = CropMask().run(ctx, mask=mask, x=2, y=1, width=3, height=4)
    assert torch.equal(out, mask[:, 1:5, 2:5])
    (cut,) = CropMask().run(ctx, mask=mask, x=6, y=4, width=512, height=512)
    assert torch.equal(cut, mask[:, 4:, 6:])  # cut at the edges
    (flat,) = CropMask().run(ctx, mask=mask[0], x=0, y=0, width=1, height=1)
    assert flat.shape == (1, 1, 1) and float(flat) == 0.0


def test_crop_outside_is_an_error(ctx: RunContext) -> None:
    with pytest.raises(ValueError, match="'x'/'y'.*outside the 8x6 mask"):
        CropMask().run(ctx, mask=torch.zeros(1, 6, 8), x=8, y=0, width=4, height=4)


# --- ImageColorToMask -------------------------------------------------------------------------


def test_color_to_mask_matches_exactly(ctx: RunContext) -> None:
    levels = torch.tensor([[[18, 52, 86], [18, 52, 87], [255, 255, 255], [18, 52, 86]]], dtype=torch.float32)
    image = (levels / 255.0)[None]  # [1, 1, 4, 3]
    (mask,) = ImageColorToMask().run(ctx, image=image, color=0x123456)
    assert mask.dtype == torch.float32 and mask.tolist() == [[[1.0, 0.0, 0.0, 1.0]]]
    (white,) = ImageColorToMask().run(ctx, image=image, color=0xFFFFFF)
    assert white.tolist() == [[[0.0, 0.0, 1.0, 0.0]]]


def test_color_to_mask_rounds_clamps_and_ignores_alpha(ctx: RunContext) -> None:
    image = torch.tensor([[[[18.4 / 255, 52.6 / 255, 85.5 / 255, 0.0], [1.7, -0.3, 1.0, 1.0]]]])
    (mask,) = ImageColorToMask().run(ctx, image=image, color=0x123556)  # 18, 53, 86 after rounding
    assert mask.tolist() == [[[1.0, 0.0]]]
    (mask,) = ImageColorToMask().run(ctx, image=image, color=0xFF00FF)
    assert mask.tolist() == [[[0.0, 1.0]]]


# --- MaskPreview ------------------------------------------------------------------------------


def test_mask_preview_saves_grey_pngs_to_temp(ctx: RunContext) -> None:
    mask = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]]).repeat(2, 1, 1)
    out = MaskPreview().run(ctx, mask=mask)
    assert out.ui is not None and out.ui["animated"] == [False]
    saved = out.ui["images"]
    assert len(saved) == 2 and all(entry["type"] == "temp" for entry in saved)
    with Image.open(ctx.folders.temp_dir / saved[0]["subfolder"] / saved[0]["filename"]) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels[..., 0].tolist() == [[0, 255], [127, 63]]  # 127.5 and 63.75, truncated as ComfyUI
    assert (pixels[..., 0] == pixels[..., 2]).all()
