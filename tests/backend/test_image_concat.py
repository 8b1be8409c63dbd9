"""The InstructPix2Pix extra channels and the pixel preparation of the image-conditioning nodes."""

from __future__ import annotations

import torch
from torch.nn import functional

from engine.backend.image_concat import ip2p_concat, ip2p_pixels, ip2p_source, x4_upscale_pixels
from engine.backend.latent_formats import LatentFormat

SD1 = LatentFormat(scale=0.18215)


def test_ip2p_concat_scales_resizes_and_repeats_the_image_latent() -> None:
    image = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    model_latent = torch.zeros(3, 4, 8, 12)
    out = ip2p_concat(image, model_latent, SD1)
    expected = functional.interpolate(image * 0.18215, size=(8, 12), mode="bilinear").expand(3, -1, -1, -1)
    torch.testing.assert_close(out, expected)
    assert torch.equal(ip2p_concat(None, model_latent, SD1), torch.zeros(3, 4, 8, 12))


def test_ip2p_source_prefers_the_positive_conditioning() -> None:
    first, second = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    positive = [[torch.zeros(1, 77, 8), {}], [torch.zeros(1, 77, 8), {"concat_latent_image": first}]]
    assert ip2p_source(positive, {"concat_latent_image": second}) is first
    assert ip2p_source([[torch.zeros(1), {}]], {"samples": second}) is None


def test_pixel_preparation() -> None:
    pixels = torch.arange(1 * 19 * 10 * 3, dtype=torch.float32).reshape(1, 19, 10, 3)
    assert torch.equal(ip2p_pixels(pixels), pixels[:, 1:17, 1:9])
    images = torch.rand(1, 16, 16, 3)
    low, width, height = x4_upscale_pixels(images, 2.0)
    assert (width, height) == (32, 32) and low.shape == (1, 3, 8, 8)
    torch.testing.assert_close(low, functional.interpolate(images.movedim(-1, 1) * 2 - 1, size=(8, 8),
                                                           mode="bilinear", align_corners=False))
