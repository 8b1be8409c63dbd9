"""Pixel filters on IMAGE tensors: blend modes, gaussian blur, sharpen, seeded noise, grey
morphology and YCbCr conversion (ComfyUI's post-processing and morphology nodes).

IMAGE tensors are float ``[B, H, W, C]`` in 0..1. Palette quantization lives in
:mod:`engine.backend.image_quantize`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.imaging import scale_image

__all__ = [
    "BLEND_MODES", "MORPHOLOGY_OPERATIONS",
    "add_noise", "blend_images", "blur_image", "gaussian_kernel_1d", "mirror_pad", "morphology",
    "rgb_to_yuv", "sharpen_image", "yuv_to_rgb",
]

BLEND_MODES: tuple[str, ...] = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")
MORPHOLOGY_OPERATIONS: tuple[str, ...] = ("erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat")


def _soft_light_curve(x: Tensor) -> Tensor:
    """The W3C soft-light helper: a cubic below 0.25, the square root above."""
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def _blend(base: Tensor, top: Tensor, mode: str) -> Tensor:
    if mode == "normal":
        return top
    if mode == "multiply":
        return base * top
    if mode == "screen":
        return 1 - (1 - base) * (1 - top)
    if mode == "overlay":
        return torch.where(base <= 0.5, 2 * base * top, 1 - 2 * (1 - base) * (1 - top))
    if mode == "soft_light":
        darker = base - (1 - 2 * top) * base * (1 - base)
        lighter = base + (2 * top - 1) * (_soft_light_curve(base) - base)
        return torch.where(top <= 0.5, darker, lighter)
    if mode == "difference":
        return base - top
    raise ValueError(f"unknown blend mode {mode!r}; use one of {', '.join(BLEND_MODES)}")


def _match_channels(image1: Tensor, image2: Tensor) -> Tensor:
    """image2 with image1's channel count: extra channels dropped, a missing alpha added as 1."""
    if image2.shape[-1] > image1.shape[-1]:
        return image2[..., : image1.shape[-1]]
    if image2.shape[-1] < image1.shape[-1]:
        return F.pad(image2, (0, 1), value=1.0)
    return image2


def blend_images(image1: Tensor, image2: Tensor, factor: float, mode: str) -> Tensor:
    """Blend image2 onto image1 with a blend mode, mixed in by ``factor``; clamped to 0..1.

    image2 is first given image1's channels, then resized (bicubic, centre crop) to its shape.
    Mode "difference" is image1 - image2 (negative values clamp to 0), as in ComfyUI.
    """
    image2 = _match_channels(image1, image2).to(image1.device)
    if image1.shape != image2.shape:
        image2 = scale_image(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
    blended = _blend(image1, image2, mode)
    return torch.clamp(image1 * (1 - factor) + blended * factor, 0, 1)


def gaussian_kernel_1d(size: int, sigma: float, dtype: torch.dtype = torch.float32,
                       device: torch.device | None = None) -> Tensor:
    """ComfyUI's blur kernel along one axis: taps on a -1..1 grid (sigma is in that unit, not in
    pixels), normalised. The 2-D kernel is its outer product with itself."""
    grid = torch.linspace(-1, 1, size, device=device)
    taps = torch.exp(-(grid * grid) / (2.0 * sigma * sigma))
    return (taps / taps.sum()).to(dtype)


def mirror_pad(x: Tensor, pad: int) -> Tensor:
    """Pad the last two dims of ``[N, C, H, W]`` by ``pad`` reflecting about the edge pixels
    (torch "reflect", scipy "mirror"); pads wider than the image keep reflecting."""
    for dim in (-1, -2):
        left = pad
        while left > 0:
            size = x.shape[dim]
            step = left if size < 2 else min(left, size - 1)
            pads = (step, step, 0, 0) if dim == -1 else (0, 0, step, step)
            x = F.pad(x, pads, mode="replicate" if size < 2 else "reflect")
            left -= step
    return x


def blur_image(image: Tensor, radius: int, sigma: float) -> Tensor:
    """Gaussian blur with a (2 * radius + 1)^2 kernel (:func:`gaussian_kernel_1d`), mirrored edges."""
    if radius == 0:
        return image
    channels = image.shape[-1]
    taps = gaussian_kernel_1d(2 * radius + 1, sigma, image.dtype, image.device)
    planes = mirror_pad(image.movedim(-1, 1), radius)
    rows = taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    planes = F.conv2d(planes, rows, groups=channels)
    planes = F.conv2d(planes, rows.transpose(2, 3), groups=channels)
    return planes.movedim(1, -1).contiguous()


def sharpen_image(image: Tensor, radius: int, sigma: float, alpha: float) -> Tensor:
    """Unsharp mask: ``x + 10 * alpha * (x - blur(x))`` with ComfyUI's blur kernel; clamped to 0..1."""
    if radius == 0:
        return image
    amount = alpha * 10
    blurred = blur_image(image, radius, sigma)
    return torch.clamp((1 + amount) * image - amount * blurred, 0, 1)


def add_noise(image: Tensor, seed: int, strength: float) -> Tensor:
    """Add ``strength`` * standard normal noise from a CPU generator seeded with ``seed``; clamp."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
    return torch.clamp(image + strength * noise, 0.0, 1.0)


def _flat_extreme(x: Tensor, size: int, largest: bool) -> Tensor:
    """Max (dilation) or min (erosion) over a size x size window anchored at size // 2.

    Outside the image counts as absent (kornia's "geodesic" border), so for a flat window this
    equals scipy.ndimage's maximum/minimum_filter with mode="nearest".
    """
    before, after = size // 2, size - 1 - size // 2
    sign = 1.0 if largest else -1.0
    padded = F.pad(sign * x, (before, after, before, after), mode="constant", value=-torch.inf)
    rows = F.max_pool2d(padded, kernel_size=(1, size), stride=1)
    return sign * F.max_pool2d(rows, kernel_size=(size, 1), stride=1)


def morphology(image: Tensor, operation: str, kernel_size: int) -> Tensor:
    """Grey morphology per channel with a flat square kernel (ComfyUI's ImageMorphology via kornia)."""
    planes = image.movedim(-1, 1)

    def dilate(x: Tensor) -> Tensor:
        return _flat_extreme(x, kernel_size, largest=True)

    def erode(x: Tensor) -> Tensor:
        return _flat_extreme(x, kernel_size, largest=False)

    results = {
        "erode": lambda: erode(planes),
        "dilate": lambda: dilate(planes),
        "open": lambda: dilate(erode(planes)),
        "close": lambda: erode(dilate(planes)),
        "gradient": lambda: dilate(planes) - erode(planes),
        "top_hat": lambda: planes - dilate(erode(planes)),
        "bottom_hat": lambda: erode(dilate(planes)) - planes,
    }
    if operation not in results:
        raise ValueError(f"unknown morphology operation {operation!r}; use one of {', '.join(MORPHOLOGY_OPERATIONS)}")
    return results[operation]().movedim(1, -1).contiguous()


def rgb_to_yuv(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Y, Cb (U) and Cr (V) of the RGB channels (kornia's YCbCr: BT.601 luma, chroma offset 0.5),
    each as a grey image with the input's three channels."""
    red, green, blue = image[..., 0:1], image[..., 1:2], image[..., 2:3]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    blue_diff = (blue - luma) * 0.564 + 0.5
    red_diff = (red - luma) * 0.713 + 0.5
    shape = (*image.shape[:-1], 3)
    return (luma.expand(shape).contiguous(), blue_diff.expand(shape).contiguous(),
            red_diff.expand(shape).contiguous())


def yuv_to_rgb(y: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """RGB from Y, U (Cb) and V (Cr) images (each averaged over its channels); clamped to 0..1."""
    luma, blue_diff, red_diff = (plane.mean(dim=-1, keepdim=True) for plane in (y, u, v))
    blue_diff, red_diff = blue_diff - 0.5, red_diff - 0.5
    red = luma + 1.403 * red_diff
    green = luma - 0.714 * red_diff - 0.344 * blue_diff
    blue = luma + 1.773 * blue_diff
    return torch.cat([red, green, blue], dim=-1).clamp(0, 1)
