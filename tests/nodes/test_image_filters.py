"""The image filter nodes on real tensors, against independent references: numpy blend formulas,
scipy.ndimage convolution and grey morphology, PIL quantization and YCbCr, torch's global RNG."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from engine.backend.image_quantize import bayer_matrix
from engine.context import RunContext
from nodes.image_filters import (
    ImageAddNoise,
    ImageBlend,
    ImageBlur,
    ImageQuantize,
    ImageRGBToYUV,
    ImageSharpen,
    ImageYUVToRGB,
    Morphology,
)


def _image(batch: int = 2, height: int = 9, width: int = 11, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(seed))


def _w3c_blend(base: np.ndarray, top: np.ndarray, mode: str) -> np.ndarray:
    """The separable blend modes as the W3C compositing spec writes them (difference unsigned here
    is ComfyUI's signed base - top; clamping later makes it max(base - top, 0))."""
    if mode == "normal":
        return top
    if mode == "multiply":
        return base * top
    if mode == "screen":
        return base + top - base * top
    if mode == "overlay":  # hard light with the layers swapped
        return np.where(base <= 0.5, base * 2 * top, 1 - 2 * (1 - top) * (1 - base))
    if mode == "soft_light":
        d = np.where(base <= 0.25, ((16 * base - 12) * base + 4) * base, np.sqrt(base))
        return np.where(top <= 0.5, base - (1 - 2 * top) * base * (1 - base), base + (2 * top - 1) * (d - base))
    assert mode == "difference"
    return base - top


@pytest.mark.parametrize("mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"])
def test_blend_modes_match_the_formulas(ctx: RunContext, mode: str) -> None:
    base, top = _image(seed=1), _image(seed=2)
    (out,) = ImageBlend().run(ctx, image1=base, image2=top, blend_factor=0.7, blend_mode=mode)
    a, b = base.double().numpy(), top.double().numpy()
    expected = np.clip(a * 0.3 + _w3c_blend(a, b, mode) * 0.7, 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_blend_resizes_image2_and_adds_alpha(ctx: RunContext) -> None:
    rgba = _image(height=8, width=8, channels=4)
    grey = torch.full((1, 4, 6, 3), 0.25)
    (out,) = ImageBlend().run(ctx, image1=rgba, image2=grey, blend_factor=1.0, blend_mode="normal")
    assert out.shape == rgba.shape
    assert torch.allclose(out[..., :3], torch.tensor(0.25), atol=1e-6)
    assert torch.all(out[..., 3] == 1.0)


def _comfy_gaussian(size: int, sigma: float) -> np.ndarray:
    """ComfyUI's 2-D blur kernel written directly: exp(-d^2 / 2 sigma^2) on a -1..1 grid, normalised."""
    grid = np.linspace(-1, 1, size)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    kernel = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _convolve_planes(image: torch.Tensor, kernel: np.ndarray) -> np.ndarray:
    """scipy convolution per image and channel, mirrored edges (torch's "reflect")."""
    planes = image.double().numpy()
    out = np.empty_like(planes)
    for b in range(planes.shape[0]):
        for c in range(planes.shape[3]):
            out[b, :, :, c] = ndimage.convolve(planes[b, :, :, c], kernel, mode="mirror")
    return out


@pytest.mark.parametrize(("radius", "sigma", "size"), [(1, 1.0, (9, 11)), (3, 0.4, (9, 11)), (6, 2.0, (4, 5)),
                                                       (2, 1.0, (1, 5))])
def test_blur_matches_scipy_with_comfyuis_kernel(ctx: RunContext, radius: int, sigma: float,
                                                 size: tuple[int, int]) -> None:
    image = _image(height=size[0], width=size[1])
    (out,) = ImageBlur().run(ctx, image=image, blur_radius=radius, sigma=sigma)
    expected = _convolve_planes(image, _comfy_gaussian(2 * radius + 1, sigma))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(("radius", "sigma", "alpha"), [(1, 1.0, 1.0), (2, 0.5, 0.05), (3, 3.0, 0.0)])
def test_sharpen_matches_scipy_with_comfyuis_kernel(ctx: RunContext, radius: int, sigma: float,
                                                    alpha: float) -> None:
    image = _image()
    (out,) = ImageSharpen().run(ctx, image=image, sharpen_radius=radius, sigma=sigma, alpha=alpha)
    kernel = _comfy_gaussian(2 * radius + 1, sigma) * -(alpha * 10)
    kernel[radius, radius] += 1.0 - kernel.sum()
    expected = np.clip(_convolve_planes(image, kernel), 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def _pil_quantize(image: torch.Tensor, colors: int, dither: Image.Dither) -> np.ndarray:
    out = []
    for pixels in (image * 255).to(torch.uint8).numpy():
        rgb = Image.fromarray(pixels, mode="RGB")
        mapped = rgb.quantize(palette=rgb.quantize(colors=colors), dither=dither)
        out.append(np.asarray(mapped.convert("RGB"), dtype=np.float32) / 255)
    return np.stack(out)


@pytest.mark.parametrize(("dither", "pil_dither"), [("none", Image.Dither.NONE),
                                                     ("floyd-steinberg", Image.Dither.FLOYDSTEINBERG)])
@pytest.mark.parametrize("colors", [2, 5, 256])
def test_quantize_matches_pil(ctx: RunContext, dither: str, pil_dither: Image.Dither, colors: int) -> None:
    image = _image(height=12, width=16)
    (out,) = ImageQuantize().run(ctx, image=image, colors=colors, dither=dither)
    np.testing.assert_array_equal(out.numpy(), _pil_quantize(image, colors, pil_dither))
    assert all(len(np.unique(o.reshape(-1, 3), axis=0)) <= colors for o in out.numpy())


def test_bayer_matrices_are_the_classic_orderings() -> None:
    assert np.array_equal(np.argsort(np.argsort(bayer_matrix(1).ravel())).reshape(2, 2), [[0, 2], [3, 1]])
    classic4 = [[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]
    assert np.array_equal(np.argsort(np.argsort(bayer_matrix(2).ravel())).reshape(4, 4), classic4)
    assert bayer_matrix(4).shape == (16, 16) and abs(float(bayer_matrix(4).mean())) < 1e-6


@pytest.mark.parametrize("dither", ["bayer-2", "bayer-4", "bayer-8", "bayer-16"])
def test_bayer_dither_uses_the_palette_and_dithers_a_ramp(ctx: RunContext, dither: str) -> None:
    ramp = torch.linspace(0, 1, 32).view(1, 1, 32, 1).expand(1, 16, 32, 3).contiguous()
    (out,) = ImageQuantize().run(ctx, image=ramp, colors=2, dither=dither)
    (plain,) = ImageQuantize().run(ctx, image=ramp, colors=2, dither="none")
    assert set(np.unique(out.numpy())) <= set(np.unique(plain.numpy()))
    changes = lambda x: int((x[0, :, 1:, 0] != x[0, :, :-1, 0]).sum())  # noqa: E731
    assert changes(out) > 4 * changes(plain)  # ordered dither scatters the threshold


def test_add_noise_is_comfyuis_seeded_global_draw(ctx: RunContext) -> None:
    image = _image()
    seed = 2**64 - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected = torch.clamp(image + 0.3 * torch.randn(image.size()), 0, 1)
    state = torch.random.get_rng_state()
    (out,) = ImageAddNoise().run(ctx, image=image, seed=seed, strength=0.3)
    assert torch.equal(out, expected)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    (other,) = ImageAddNoise().run(ctx, image=image, seed=1, strength=0.3)
    assert not torch.equal(other, out)


def _per_plane(image: torch.Tensor, filt: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    planes = image.double().numpy()
    out = np.empty_like(planes)
    for b in range(planes.shape[0]):
        for c in range(planes.shape[3]):
            out[b, :, :, c] = filt(planes[b, :, :, c])
    return out


_SCIPY_ODD = {
    "erode": lambda x, k: ndimage.grey_erosion(x, size=(k, k), mode="nearest"),
    "dilate": lambda x, k: ndimage.grey_dilation(x, size=(k, k), mode="nearest"),
    "open": lambda x, k: ndimage.grey_opening(x, size=(k, k), mode="nearest"),
    "close": lambda x, k: ndimage.grey_closing(x, size=(k, k), mode="nearest"),
    "gradient": lambda x, k: ndimage.morphological_gradient(x, size=(k, k), mode="nearest"),
    "top_hat": lambda x, k: ndimage.white_tophat(x, size=(k, k), mode="nearest"),
    "bottom_hat": lambda x, k: ndimage.black_tophat(x, size=(k, k), mode="nearest"),
}


@pytest.mark.parametrize("operation", list(_SCIPY_ODD))
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_morphology_matches_scipy_grey_morphology(ctx: RunContext, operation: str, kernel_size: int) -> None:
    image = _image(height=10, width=13)
    (out,) = Morphology().run(ctx, image=image, operation=operation, kernel_size=kernel_size)
    expected = _per_plane(image, lambda x: _SCIPY_ODD[operation](x, kernel_size))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_morphology_even_kernel_anchors_at_half(ctx: RunContext) -> None:
    """kornia anchors an even k x k window at k // 2: scipy's maximum/minimum_filter of size k."""
    image = _image(height=10, width=13)
    (dilated,) = Morphology().run(ctx, image=image, operation="dilate", kernel_size=4)
    (opened,) = Morphology().run(ctx, image=image, operation="open", kernel_size=4)
    np.testing.assert_allclose(dilated.numpy(), _per_plane(image, lambda x: ndimage.maximum_filter(
        x, size=4, mode="nearest")), atol=1e-6)
    expected = _per_plane(image, lambda x: ndimage.maximum_filter(
        ndimage.minimum_filter(x, size=4, mode="nearest"), size=4, mode="nearest"))
    np.testing.assert_allclose(opened.numpy(), expected, atol=1e-6)


def test_morphology_kernel_larger_than_the_image(ctx: RunContext) -> None:
    image = _image(height=3, width=4)
    (out,) = Morphology().run(ctx, image=image, operation="erode", kernel_size=999)
    assert torch.equal(out, image.amin(dim=(1, 2), keepdim=True).expand_as(image))


def test_rgb_to_yuv_matches_kornias_formula_and_pil(ctx: RunContext) -> None:
    image = _image()
    y, u, v = ImageRGBToYUV().run(ctx, image=image)
    rgb = image.double().numpy()
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(y.numpy(), np.repeat(luma[..., None], 3, -1), atol=1e-6)
    np.testing.assert_allclose(u[..., 0].numpy(), (rgb[..., 2] - luma) * 0.564 + 0.5, atol=1e-6)
    np.testing.assert_allclose(v[..., 0].numpy(), (rgb[..., 0] - luma) * 0.713 + 0.5, atol=1e-6)
    pixels = (image * 255).round().to(torch.uint8).numpy()
    for index in range(image.shape[0]):
        pil = np.asarray(Image.fromarray(pixels[index]).convert("YCbCr"), dtype=np.float64) / 255
        ours = np.stack([y[index, ..., 0], u[index, ..., 0], v[index, ..., 0]], -1)
        np.testing.assert_allclose(ours, pil, atol=3 / 255)  # PIL is full-range BT.601 in 8 bits


def test_yuv_round_trip_and_channel_means(ctx: RunContext) -> None:
    image = _image()
    y, u, v = ImageRGBToYUV().run(ctx, image=image)
    (back,) = ImageYUVToRGB().run(ctx, Y=y, U=u, V=v)
    assert torch.allclose(back, image, atol=2e-3)  # kornia's coefficients are rounded to 3 digits
    y_rgb = torch.cat([y[..., :1] - 0.1, y[..., :1], y[..., :1] + 0.1], dim=-1)  # mean = Y
    (same,) = ImageYUVToRGB().run(ctx, Y=y_rgb, U=u, V=v)
    assert torch.allclose(same, back, atol=1e-6)
    (clamped,) = ImageYUVToRGB().run(ctx, Y=torch.ones_like(y), U=torch.ones_like(u), V=torch.ones_like(v))
    assert float(clamped.max()) == 1.0 and float(clamped.min()) >= 0.0
