"""The image transform nodes on real tensors: exact geometry against numpy, sizes against
ComfyUI's formulas, stitching/padding layouts and list rebatching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.context import RunContext
from nodes.image_transform import (
    GetImageSize,
    ImageCrop,
    ImageFlip,
    ImageFromBatch,
    ImageRotate,
    ImageScaleToMaxDimension,
    ImageScaleToTotalPixels,
    ImageStitch,
    RebatchImages,
    RepeatImageBatch,
    ResizeAndPadImage,
)


def _image(batch: int = 2, height: int = 5, width: int = 7, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("rotation", "quarter_turns"),
                         [("none", 0), ("90 degrees", 1), ("180 degrees", 2), ("270 degrees", 3)])
def test_rotate_is_clockwise_quarter_turns(ctx: RunContext, rotation: str, quarter_turns: int) -> None:
    image = _image()
    (out,) = ImageRotate().run(ctx, image=image, rotation=rotation)
    expected = np.rot90(image.numpy(), k=-quarter_turns, axes=(1, 2))
    assert np.array_equal(out.numpy(), expected)


def test_rotate_90_moves_top_left_to_top_right(ctx: RunContext) -> None:
    image = torch.zeros(1, 2, 3, 3)
    image[0, 0, 0] = 1.0
    (out,) = ImageRotate().run(ctx, image=image, rotation="90 degrees")
    assert out.shape == (1, 3, 2, 3)
    assert out[0, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert out.sum() == 3.0


@pytest.mark.parametrize(("method", "axis"), [("x-axis: vertically", 1), ("y-axis: horizontally", 2)])
def test_flip(ctx: RunContext, method: str, axis: int) -> None:
    image = _image()
    (out,) = ImageFlip().run(ctx, image=image, flip_method=method)
    assert np.array_equal(out.numpy(), np.flip(image.numpy(), axis=axis))


def test_crop_exact_and_clamped(ctx: RunContext) -> None:
    image = _image(height=10, width=12)
    (out,) = ImageCrop().run(ctx, image=image, width=4, height=3, x=2, y=5)
    assert torch.equal(out, image[:, 5:8, 2:6])
    (edge,) = ImageCrop().run(ctx, image=image, width=512, height=512, x=9, y=0)
    assert torch.equal(edge, image[:, :, 9:])
    (past,) = ImageCrop().run(ctx, image=image, width=5, height=5, x=100, y=100)
    assert torch.equal(past, image[:, 9:, 11:])


def test_get_image_size(ctx: RunContext) -> None:
    assert GetImageSize().run(ctx, image=_image(batch=3, height=5, width=7)) == (7, 5, 3)


def test_repeat_and_from_batch(ctx: RunContext) -> None:
    image = _image(batch=3)
    (repeated,) = RepeatImageBatch().run(ctx, image=image, amount=2)
    assert torch.equal(repeated, torch.cat([image, image]))
    (picked,) = ImageFromBatch().run(ctx, image=image, batch_index=1, length=1)
    assert torch.equal(picked, image[1:2])
    (clamped,) = ImageFromBatch().run(ctx, image=image, batch_index=10, length=5)
    assert torch.equal(clamped, image[2:3])
    (tail,) = ImageFromBatch().run(ctx, image=image, batch_index=1, length=9)
    assert torch.equal(tail, image[1:])


def test_rebatch_images_regroups_a_list(ctx: RunContext) -> None:
    first, second = _image(batch=3, seed=1), _image(batch=2, seed=2)
    (batches,) = RebatchImages().run(ctx, images=[first, second], batch_size=[2])
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat(batches), torch.cat([first, second]))
    (one,) = RebatchImages().run(ctx, images=[first, second], batch_size=[8])
    assert len(one) == 1 and torch.equal(one[0], torch.cat([first, second]))


def test_rebatch_cuts_where_the_size_changes(ctx: RunContext) -> None:
    small, large = _image(batch=1, height=4, width=4), _image(batch=3, height=6, width=6)
    (batches,) = RebatchImages().run(ctx, images=[small, large], batch_size=[2])
    assert [tuple(b.shape[:3]) for b in batches] == [(1, 4, 4), (2, 6, 6), (1, 6, 6)]


@pytest.mark.parametrize(("megapixels", "steps"), [(0.01, 1), (0.01, 8), (0.003, 1)])
def test_scale_to_total_pixels_size(ctx: RunContext, megapixels: float, steps: int) -> None:
    image = _image(batch=1, height=32, width=64)
    (out,) = ImageScaleToTotalPixels().run(ctx, image=image, upscale_method="nearest-exact",
                                           megapixels=megapixels, resolution_steps=steps)
    factor = (megapixels * 1024 * 1024 / (64 * 32)) ** 0.5
    width, height = round(64 * factor / steps) * steps, round(32 * factor / steps) * steps
    assert out.shape == (1, height, width, 3)
    reference = F.interpolate(image.movedim(-1, 1), size=(height, width), mode="nearest-exact").movedim(1, -1)
    assert torch.equal(out, reference)


def test_scale_to_total_pixels_rejects_an_empty_result(ctx: RunContext) -> None:
    with pytest.raises(ValueError, match="raise the target size"):
        ImageScaleToTotalPixels().run(ctx, image=_image(batch=1, height=32, width=64), upscale_method="area",
                                      megapixels=0.01, resolution_steps=256)


@pytest.mark.parametrize(("height", "width", "size"), [(20, 40, (5, 10)), (40, 20, (10, 5)), (30, 30, (10, 10)),
                                                       (30, 7, (10, 2))])
def test_scale_to_max_dimension(ctx: RunContext, height: int, width: int, size: tuple[int, int]) -> None:
    image = _image(batch=1, height=height, width=width)
    (out,) = ImageScaleToMaxDimension().run(ctx, image=image, upscale_method="area", largest_size=10)
    assert tuple(out.shape[1:3]) == size
    reference = F.interpolate(image.movedim(-1, 1), size=size, mode="area").movedim(1, -1)
    assert torch.allclose(out, reference, atol=1e-6)


@pytest.mark.parametrize(("color", "fill"), [("white", 1.0), ("black", 0.0)])
def test_resize_and_pad_centres_the_fitted_image(ctx: RunContext, color: str, fill: float) -> None:
    image = _image(batch=1, height=4, width=8)
    (out,) = ResizeAndPadImage().run(ctx, image=image, target_width=16, target_height=15, padding_color=color,
                                     interpolation="nearest-exact")
    assert out.shape == (1, 15, 16, 3)
    resized = F.interpolate(image.movedim(-1, 1), size=(8, 16), mode="nearest-exact").movedim(1, -1)
    top = (15 - 8) // 2
    assert torch.equal(out[:, top : top + 8], resized)
    assert torch.all(out[:, :top] == fill) and torch.all(out[:, top + 8 :] == fill)


def test_stitch_without_image2_returns_image1(ctx: RunContext) -> None:
    image = _image()
    (out,) = ImageStitch().run(ctx, image1=image, direction="right", match_image_size=True, spacing_width=0,
                               spacing_color="white")
    assert out is image


def test_stitch_right_pads_heights_with_the_spacing_grey(ctx: RunContext) -> None:
    tall, short = _image(batch=1, height=6, width=3, seed=1), _image(batch=1, height=3, width=2, seed=2)
    (out,) = ImageStitch().run(ctx, image1=tall, image2=short, direction="right", match_image_size=False,
                               spacing_width=0, spacing_color="black")
    assert out.shape == (1, 6, 5, 3)
    assert torch.equal(out[:, :, :3], tall)
    assert torch.equal(out[:, 1:4, 3:], short)  # 3 rows of padding: 1 above, 2 below
    assert torch.all(out[:, 0, 3:] == 0.0) and torch.all(out[:, 4:, 3:] == 0.0)


def test_stitch_left_with_odd_spacing_and_colour(ctx: RunContext) -> None:
    first, second = _image(batch=1, height=4, width=3, seed=1), _image(batch=1, height=4, width=2, seed=2)
    (out,) = ImageStitch().run(ctx, image1=first, image2=second, direction="left", match_image_size=False,
                               spacing_width=3, spacing_color="red")
    assert out.shape == (1, 4, 2 + 4 + 3, 3)
    assert torch.equal(out[:, :, :2], second) and torch.equal(out[:, :, 6:], first)
    assert torch.equal(out[0, :, 2:6], torch.tensor([1.0, 0.0, 0.0]).expand(4, 4, 3))


def test_stitch_down_matches_width_and_evens_batches_and_channels(ctx: RunContext) -> None:
    rgba = _image(batch=2, height=4, width=6, channels=4, seed=1)
    rgb = _image(batch=1, height=10, width=20, channels=3, seed=2)
    (out,) = ImageStitch().run(ctx, image1=rgba, image2=rgb, direction="down", match_image_size=True,
                               spacing_width=2, spacing_color="white")
    # image2 (aspect 2) is resized to width 6 and height int(6 / 2) = 3; a 2-row white spacer
    assert out.shape == (2, 4 + 2 + 3, 6, 4)
    assert torch.equal(out[:, :4], rgba)
    assert torch.all(out[:, 4:6] == 1.0)
    assert torch.all(out[:, 6:, :, 3] == 1.0)
    assert torch.equal(out[0, 6:], out[1, 6:])  # the shorter batch repeats its last image
