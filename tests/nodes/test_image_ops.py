"""ImageScale, ImageScaleBy, ImageInvert, ImageBatch and EmptyImage, checked numerically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.context import RunContext
from engine.sdk.imaging import CROP_METHODS as RESAMPLE_CROPS
from engine.sdk.imaging import RESAMPLE_METHODS, center_crop_to_aspect
from nodes.image_ops import (
    CROP_METHODS,
    UPSCALE_METHODS,
    EmptyImage,
    ImageBatch,
    ImageInvert,
    ImageScale,
    ImageScaleBy,
)
from nodes.latent_ops import LATENT_UPSCALE_METHODS

METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def _random_image(batch: int = 1, height: int = 10, width: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, height, width, 3), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_image_scale_sizes(ctx: RunContext, method: str) -> None:
    image = _random_image(batch=2)
    (out,) = ImageScale().run(ctx, image=image, upscale_method=method, width=40, height=30, crop="disabled")
    assert out.shape == (2, 30, 40, 3)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("method", METHODS)
def test_image_scale_keeps_constant_images_constant(ctx: RunContext, method: str) -> None:
    image = torch.full((1, 8, 8, 3), 0.25)
    (out,) = ImageScale().run(ctx, image=image, upscale_method=method, width=13, height=5, crop="center")
    torch.testing.assert_close(out, torch.full((1, 5, 13, 3), 0.25))


def test_image_scale_zero_keeps_aspect(ctx: RunContext) -> None:
    image = _random_image(height=10, width=20)
    node = ImageScale()
    (out,) = node.run(ctx, image=image, upscale_method="bilinear", width=40, height=0, crop="disabled")
    assert out.shape == (1, 20, 40, 3)
    (out,) = node.run(ctx, image=image, upscale_method="bilinear", width=0, height=5, crop="disabled")
    assert out.shape == (1, 5, 10, 3)
    (out,) = node.run(ctx, image=image, upscale_method="bilinear", width=0, height=0, crop="disabled")
    assert torch.equal(out, image)


def test_image_scale_nearest_repeats_pixels(ctx: RunContext) -> None:
    image = torch.tensor([[0.0, 0.2], [0.6, 1.0]]).reshape(1, 2, 2, 1).expand(1, 2, 2, 3)
    (out,) = ImageScale().run(ctx, image=image, upscale_method="nearest-exact", width=4, height=4,
                              crop="disabled")
    expected = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.2, 0.2],
                             [0.6, 0.6, 1.0, 1.0], [0.6, 0.6, 1.0, 1.0]])
    torch.testing.assert_close(out[0, :, :, 1], expected)


def test_image_scale_area_averages_blocks(ctx: RunContext) -> None:
    image = _random_image(height=4, width=4)
    (out,) = ImageScale().run(ctx, image=image, upscale_method="area", width=2, height=2, crop="disabled")
    torch.testing.assert_close(out[0, 0, 0], image[0, :2, :2].mean(dim=(0, 1)))
    torch.testing.assert_close(out[0, 1, 1], image[0, 2:, 2:].mean(dim=(0, 1)))


def test_image_scale_center_crop_removes_the_sides(ctx: RunContext) -> None:
    image = torch.zeros((1, 10, 30, 3))
    image[:, :, 10:20] = 0.5
    image[:, :, 20:] = 1.0
    (cropped,) = ImageScale().run(ctx, image=image, upscale_method="nearest-exact", width=10, height=10,
                                  crop="center")
    torch.testing.assert_close(cropped, torch.full((1, 10, 10, 3), 0.5))
    (squeezed,) = ImageScale().run(ctx, image=image, upscale_method="nearest-exact", width=10, height=10,
                                   crop="disabled")
    assert squeezed.min() == 0.0 and squeezed.max() == 1.0


def test_center_crop_tall_image() -> None:
    x = torch.arange(12.0).reshape(1, 1, 6, 2)
    out = center_crop_to_aspect(x, 2, 2)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))


def test_lanczos_matches_pil_on_8bit_data(ctx: RunContext) -> None:
    # Smooth content away from 0 and 255: PIL's 8-bit path clips between its two passes.
    yy, xx = np.mgrid[0:12, 0:16].astype(np.float32)
    channels = [np.sin(xx / 3.0 + k) * np.cos(yy / 4.0) for k in range(3)]
    pixels = (128.0 + 80.0 * np.stack(channels, axis=-1)).round().astype(np.uint8)
    image = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]
    (out,) = ImageScale().run(ctx, image=image, upscale_method="lanczos", width=24, height=20,
                              crop="disabled")
    reference = np.asarray(Image.fromarray(pixels).resize((24, 20), Image.Resampling.LANCZOS))
    diff = np.abs(out[0].numpy() * 255.0 - reference.astype(np.float32))
    assert diff.max() <= 1.5
    assert diff.mean() < 0.5


def test_bicubic_overshoot_is_clamped(ctx: RunContext) -> None:
    image = torch.zeros((1, 4, 4, 3))
    image[:, :, 2:] = 1.0
    (out,) = ImageScale().run(ctx, image=image, upscale_method="bicubic", width=16, height=16,
                              crop="disabled")
    assert out.min() == 0.0 and out.max() == 1.0


def test_image_scale_by(ctx: RunContext) -> None:
    image = _random_image(height=10, width=20)
    (up,) = ImageScaleBy().run(ctx, image=image, upscale_method="bilinear", scale_by=2.0)
    assert up.shape == (1, 20, 40, 3)
    (down,) = ImageScaleBy().run(ctx, image=image, upscale_method="area", scale_by=0.25)
    assert down.shape == (1, 2, 5, 3)  # round(2.5) == 2, round(5.0) == 5
    (tiny,) = ImageScaleBy().run(ctx, image=image, upscale_method="nearest-exact", scale_by=0.01)
    assert tiny.shape == (1, 1, 1, 3)


def test_image_invert(ctx: RunContext) -> None:
    image = torch.tensor([0.0, 0.25, 1.0]).reshape(1, 1, 1, 3)
    (out,) = ImageInvert().run(ctx, image=image)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.75, 0.0]).reshape(1, 1, 1, 3))
    assert image[0, 0, 0, 0] == 0.0  # input untouched


def test_image_batch_same_size_concatenates(ctx: RunContext) -> None:
    a, b = _random_image(batch=2, seed=1), _random_image(batch=1, seed=2)
    (out,) = ImageBatch().run(ctx, image1=a, image2=b)
    assert out.shape == (3, 10, 20, 3)
    assert torch.equal(out[:2], a) and torch.equal(out[2:], b)


def test_image_batch_resizes_second_image(ctx: RunContext) -> None:
    a = _random_image(batch=1, height=10, width=20)
    b = torch.full((2, 5, 7, 3), 0.4)
    (out,) = ImageBatch().run(ctx, image1=a, image2=b)
    assert out.shape == (3, 10, 20, 3)
    torch.testing.assert_close(out[1:], torch.full((2, 10, 20, 3), 0.4))


def test_empty_image_colour(ctx: RunContext) -> None:
    (out,) = EmptyImage().run(ctx, width=5, height=3, batch_size=2, color=0x12AB7F)
    assert out.shape == (2, 3, 5, 3)
    expected = torch.tensor([0x12, 0xAB, 0x7F], dtype=torch.float32) / 255.0
    torch.testing.assert_close(out, expected.expand(2, 3, 5, 3))
    (black,) = EmptyImage().run(ctx, width=1, height=1, batch_size=1, color=0)
    assert torch.count_nonzero(black) == 0
    (white,) = EmptyImage().run(ctx, width=1, height=1, batch_size=1, color=0xFFFFFF)
    assert torch.equal(white, torch.ones((1, 1, 1, 3)))


def test_declared_methods_are_ones_the_backend_knows() -> None:
    # The node modules declare their combos torch-free; the backend keeps its own list.
    assert set(UPSCALE_METHODS) | set(LATENT_UPSCALE_METHODS) <= RESAMPLE_METHODS
    assert CROP_METHODS == RESAMPLE_CROPS
