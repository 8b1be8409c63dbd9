"""PorterDuffImageComposite (every mode against its formula in numpy), SplitImageWithAlpha, JoinImageWithAlpha."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from engine.backend.porter_duff import PORTER_DUFF_MODES as BACKEND_MODES
from engine.context import RunContext
from nodes.compositing import PORTER_DUFF_MODES, JoinImageWithAlpha, PorterDuffImageComposite, SplitImageWithAlpha

Arr = np.ndarray


def _union(a: Arr, b: Arr) -> Arr:
    return a + b - a * b


# Premultiplied colour (Cs, Cd) and alpha (As, Ad) -> (alpha, premultiplied colour), from the
# Porter-Duff paper and the SVG/Skia blend formulas ComfyUI follows.
FORMULAS: dict[str, Callable[[Arr, Arr, Arr, Arr], tuple[Arr, Arr]]] = {
    "ADD": lambda cs, as_, cd, ad: (np.clip(as_ + ad, 0, 1), np.clip(cs + cd, 0, 1)),
    "CLEAR": lambda cs, as_, cd, ad: (0 * ad, 0 * cd),
    "DARKEN": lambda cs, as_, cd, ad: (_union(as_, ad), (1 - ad) * cs + (1 - as_) * cd + np.minimum(cs, cd)),
    "DST": lambda cs, as_, cd, ad: (ad, cd),
    "DST_ATOP": lambda cs, as_, cd, ad: (as_, as_ * cd + (1 - ad) * cs),
    "DST_IN": lambda cs, as_, cd, ad: (as_ * ad, cd * as_),
    "DST_OUT": lambda cs, as_, cd, ad: ((1 - as_) * ad, (1 - as_) * cd),
    "DST_OVER": lambda cs, as_, cd, ad: (ad + (1 - ad) * as_, cd + (1 - ad) * cs),
    "LIGHTEN": lambda cs, as_, cd, ad: (_union(as_, ad), (1 - ad) * cs + (1 - as_) * cd + np.maximum(cs, cd)),
    "MULTIPLY": lambda cs, as_, cd, ad: (as_ * ad, cs * cd),
    "OVERLAY": lambda cs, as_, cd, ad: (
        _union(as_, ad), np.where(2 * cd < ad, 2 * cs * cd, as_ * ad - 2 * (ad - cs) * (as_ - cd))),
    "SCREEN": lambda cs, as_, cd, ad: (_union(as_, ad), cs + cd - cs * cd),
    "SRC": lambda cs, as_, cd, ad: (as_, cs),
    "SRC_ATOP": lambda cs, as_, cd, ad: (ad, ad * cs + (1 - as_) * cd),
    "SRC_IN": lambda cs, as_, cd, ad: (as_ * ad, cs * ad),
    "SRC_OUT": lambda cs, as_, cd, ad: ((1 - ad) * as_, (1 - ad) * cs),
    "SRC_OVER": lambda cs, as_, cd, ad: (as_ + (1 - as_) * ad, cs + (1 - as_) * cd),
    "XOR": lambda cs, as_, cd, ad: ((1 - ad) * as_ + (1 - as_) * ad, (1 - ad) * cs + (1 - as_) * cd),
}


def _reference(src: Arr, src_mask: Arr, dst: Arr, dst_mask: Arr, mode: str) -> tuple[Arr, Arr]:
    as_, ad = (1 - src_mask)[..., None], (1 - dst_mask)[..., None]
    alpha, colour = FORMULAS[mode](src * as_, as_, dst * ad, ad)
    safe = np.where(alpha > 1e-5, alpha, 1.0)
    straight = np.where(alpha > 1e-5, colour / safe, 0.0)
    return np.clip(straight, 0, 1), (1 - alpha)[..., 0]


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    src, dst = rng.random((2, 5, 7, 3)), rng.random((2, 5, 7, 3))
    src_mask, dst_mask = rng.random((2, 5, 7)), rng.random((2, 5, 7))
    src_mask[0, 0, :3] = [0.0, 1.0, 1.0]  # opaque, and transparent source pixels
    dst_mask[0, 0, :3] = [1.0, 1.0, 0.0]  # one pixel transparent in both: output colour 0
    return tuple(torch.tensor(a, dtype=torch.float32) for a in (src, src_mask, dst, dst_mask))


def test_node_lists_the_backend_modes() -> None:
    assert PORTER_DUFF_MODES == BACKEND_MODES == tuple(FORMULAS)


@pytest.mark.parametrize("mode", sorted(FORMULAS))
def test_each_mode_matches_its_formula(ctx: RunContext, mode: str) -> None:
    src, src_mask, dst, dst_mask = _inputs()
    image, mask = PorterDuffImageComposite().run(ctx, source=src, source_alpha=src_mask, destination=dst,
                                                 destination_alpha=dst_mask, mode=mode)
    as_array = [t.double().numpy() for t in (src, src_mask, dst, dst_mask)]
    want_image, want_mask = _reference(as_array[0], as_array[1], as_array[2], as_array[3], mode)
    assert image.shape == (2, 5, 7, 3) and mask.shape == (2, 5, 7)
    np.testing.assert_allclose(image.numpy(), want_image, atol=2e-5)
    np.testing.assert_allclose(mask.numpy(), want_mask, atol=2e-6)


def test_fully_transparent_result_has_zero_colour(ctx: RunContext) -> None:
    src, src_mask, dst, dst_mask = _inputs()
    image, mask = PorterDuffImageComposite().run(ctx, source=src, source_alpha=src_mask, destination=dst,
                                                 destination_alpha=dst_mask, mode="SRC_OVER")
    assert mask[0, 0, 1] == 1.0 and torch.all(image[0, 0, 1] == 0.0)
    assert torch.allclose(image[0, 0, 0], src[0, 0, 0])  # an opaque source pixel shows as is


def test_default_dst_keeps_destination(ctx: RunContext) -> None:
    src, src_mask, dst, dst_mask = _inputs(1)
    dst_mask = torch.zeros_like(dst_mask)  # opaque destination
    image, mask = PorterDuffImageComposite().run(ctx, source=src, source_alpha=src_mask, destination=dst,
                                                 destination_alpha=dst_mask, mode="DST")
    assert torch.allclose(image, dst, atol=1e-6) and torch.all(mask == 0.0)


def test_batch_is_the_shortest_and_sizes_follow_the_destination(ctx: RunContext) -> None:
    src = torch.full((3, 4, 4, 3), 0.25)
    src_mask = torch.zeros(1, 4, 4)
    dst = torch.full((2, 8, 6, 3), 0.75)
    dst_mask = torch.zeros(2, 2, 3)
    image, mask = PorterDuffImageComposite().run(ctx, source=src, source_alpha=src_mask, destination=dst,
                                                 destination_alpha=dst_mask, mode="SRC_OVER")
    assert image.shape == (1, 8, 6, 3) and mask.shape == (1, 8, 6)
    assert torch.allclose(image, torch.full_like(image, 0.25), atol=1e-5)  # constant images resize to constants


def test_channel_mismatch_is_refused(ctx: RunContext) -> None:
    with pytest.raises(ValueError, match="channels"):
        PorterDuffImageComposite().run(ctx, source=torch.zeros(1, 4, 4, 4), source_alpha=torch.zeros(1, 4, 4),
                                       destination=torch.zeros(1, 4, 4, 3), destination_alpha=torch.zeros(1, 4, 4),
                                       mode="SRC")


def test_split_rgba_and_rgb(ctx: RunContext) -> None:
    rgba = torch.rand(2, 3, 4, 4)
    image, mask = SplitImageWithAlpha().run(ctx, image=rgba)
    assert torch.equal(image, rgba[..., :3]) and torch.allclose(mask, 1.0 - rgba[..., 3])
    image, mask = SplitImageWithAlpha().run(ctx, image=rgba[..., :3])
    assert image.shape == (2, 3, 4, 3) and torch.equal(mask, torch.zeros(2, 3, 4))


def test_join_then_split_round_trips(ctx: RunContext) -> None:
    rgb, mask = torch.rand(2, 3, 5, 3), torch.rand(2, 3, 5)
    (rgba,) = JoinImageWithAlpha().run(ctx, image=rgb, alpha=mask)
    assert rgba.shape == (2, 3, 5, 4) and torch.allclose(rgba[..., 3], 1.0 - mask)
    image, back = SplitImageWithAlpha().run(ctx, image=rgba)
    assert torch.equal(image, rgb) and torch.allclose(back, mask, atol=1e-7)


def test_join_repeats_batches_and_resizes_the_mask(ctx: RunContext) -> None:
    rgb = torch.rand(3, 4, 6, 3)
    mask = torch.stack([torch.zeros(2, 3), torch.ones(2, 3)])  # constant masks resize to constants
    (rgba,) = JoinImageWithAlpha().run(ctx, image=rgb, alpha=mask)
    assert rgba.shape == (3, 4, 6, 4)
    assert [float(rgba[i, ..., 3].mean()) for i in range(3)] == [1.0, 0.0, 1.0]  # cycled: 0, 1, 0
    (rgba,) = JoinImageWithAlpha().run(ctx, image=rgb[:1], alpha=torch.zeros(4, 6))  # [H, W] mask, batch of one
    assert rgba.shape == (1, 4, 6, 4)
