"""Image nodes that transform pixels: scaling, inverting, batching, solid colours.

Also home of :func:`resize`, the one resampling routine shared by the image and latent nodes
(ComfyUI's methods: nearest-exact, bilinear, area, bicubic via torch; lanczos via PIL; bislerp).
IMAGE tensors are ``[B, H, W, C]`` floats in 0..1; :func:`resize` works on ``[B, C, H, W]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from engine.context import RunContext
from engine.node import Input, Node, Output
from engine.types import COMBO, FLOAT, IMAGE, INT

#: Largest width/height a node accepts (ComfyUI's MAX_RESOLUTION).
MAX_RESOLUTION = 16384

UPSCALE_METHODS: tuple[str, ...] = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS: tuple[str, ...] = ("disabled", "center")
_TORCH_MODES = frozenset({"nearest-exact", "bilinear", "area", "bicubic"})


# ---------------------------------------------------------------------------------------------
# Resampling


def center_crop_to_aspect(x: Tensor, width: int, height: int) -> Tensor:
    """Crop the last two dims of ``x`` symmetrically to the aspect ratio ``width / height``."""
    old_h, old_w = x.shape[-2], x.shape[-1]
    if width <= 0 or height <= 0 or old_h == 0 or old_w == 0:
        return x
    old_aspect = old_w / old_h
    new_aspect = width / height
    if old_aspect > new_aspect:
        cut = round((old_w - old_h * new_aspect) / 2)
        return x[..., :, cut : old_w - cut]
    if old_aspect < new_aspect:
        cut = round((old_h - old_w / new_aspect) / 2)
        return x[..., cut : old_h - cut, :]
    return x


def resize(x: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resample ``x`` ``[B, C, H, W]`` to ``height x width`` with one of ComfyUI's methods.

    ``crop="center"`` first crops to the target aspect ratio so nothing is stretched.
    """
    if crop == "center":
        x = center_crop_to_aspect(x, width, height)
    elif crop != "disabled":
        raise ValueError(f"unknown crop {crop!r}; use one of {', '.join(CROP_METHODS)}")
    if method == "bislerp":
        return bislerp(x, width, height)
    if method == "lanczos":
        return lanczos(x, width, height)
    if method not in _TORCH_MODES:
        known = ", ".join([*sorted(_TORCH_MODES), "lanczos", "bislerp"])
        raise ValueError(f"unknown upscale method {method!r}; use one of {known}")
    return F.interpolate(x, size=(height, width), mode=method)


def lanczos(x: Tensor, width: int, height: int) -> Tensor:
    """Lanczos resampling through PIL, per channel in 32-bit float mode (no 8-bit rounding)."""
    planes = x.detach().to(device="cpu", dtype=torch.float32).numpy()
    out = np.empty((*planes.shape[:2], height, width), dtype=np.float32)
    for b in range(planes.shape[0]):
        for c in range(planes.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(planes[b, c]))
            out[b, c] = np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS))
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of vectors along the last dim; magnitudes interpolate linearly.

    ``t`` broadcasts against ``a[..., :1]``. Zero vectors and (anti)parallel pairs, where the
    sphere gives no unique path, fall back to the linear blend.
    """
    eps = 1e-6
    norm_a = a.norm(dim=-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True)
    unit_a = a / norm_a.clamp_min(eps)
    unit_b = b / norm_b.clamp_min(eps)
    cos_omega = (unit_a * unit_b).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos_omega)
    sin_omega = torch.sin(omega)
    safe_sin = torch.where(sin_omega.abs() < eps, torch.ones_like(sin_omega), sin_omega)
    direction = (torch.sin((1.0 - t) * omega) * unit_a + torch.sin(t * omega) * unit_b) / safe_sin
    magnitude = norm_a * (1.0 - t) + norm_b * t
    spherical = direction * magnitude
    linear = a + (b - a) * t
    degenerate = (sin_omega.abs() < eps) | (norm_a < eps) | (norm_b < eps)
    return torch.where(degenerate, linear, spherical)


def _source_positions(size_in: int, size_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbour indices and blend weights for resampling one axis (half-pixel centres)."""
    pos = (torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5
    pos = pos.clamp(0.0, size_in - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=size_in - 1)
    return lo, hi, (pos - lo).to(torch.float32)


def bislerp(x: Tensor, width: int, height: int) -> Tensor:
    """Bilinear resize whose blends are slerps of the channel vectors (ComfyUI's "bislerp").

    Each output pixel's channel vector is a slerp between its two neighbours along the width,
    then between those results along the height. Latent vectors keep their length instead of
    shrinking the way a linear blend of differing vectors does.
    """
    dtype = x.dtype
    v = x.to(torch.float32).movedim(1, -1)  # [B, H, W, C]
    lo, hi, t = _source_positions(v.shape[2], width)
    v = slerp(v[:, :, lo], v[:, :, hi], t.to(v.device)[:, None])
    lo, hi, t = _source_positions(v.shape[1], height)
    v = slerp(v[:, lo], v[:, hi], t.to(v.device)[:, None, None])
    return v.movedim(-1, 1).contiguous().to(dtype)


def scale_image(image: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resize an IMAGE ``[B, H, W, C]``; the result is clamped to 0..1 (bicubic/lanczos overshoot)."""
    out = resize(image.movedim(-1, 1), width, height, method, crop)
    return out.movedim(1, -1).clamp(0.0, 1.0).contiguous()


def fit_size(width: int, height: int, old_width: int, old_height: int) -> tuple[int, int]:
    """Fill a 0 in ``width``/``height`` from the other one, keeping the old aspect ratio."""
    if width == 0:
        width = max(1, round(old_width * height / old_height))
    elif height == 0:
        height = max(1, round(old_height * width / old_width))
    return width, height


# ---------------------------------------------------------------------------------------------
# Nodes


def _method_input(methods: tuple[str, ...] = UPSCALE_METHODS) -> Input:
    return Input("upscale_method", COMBO, choices=methods, default=methods[0])


class ImageScale(Node):
    """Resize images to a width and height; 0 in one of them keeps the aspect ratio."""

    display_name = "Upscale Image"
    category = "image/upscaling"
    inputs = (
        Input("image", IMAGE),
        _method_input(),
        Input("width", INT, default=512, min=0, max=MAX_RESOLUTION, step=1),
        Input("height", INT, default=512, min=0, max=MAX_RESOLUTION, step=1),
        Input("crop", COMBO, choices=CROP_METHODS, default="disabled"),
    )
    outputs = (Output(IMAGE),)

    def run(
        self, ctx: RunContext, image: Tensor, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[Tensor]:
        if width == 0 and height == 0:
            return (image,)
        width, height = fit_size(width, height, image.shape[2], image.shape[1])
        return (scale_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    """Resize images by a factor."""

    display_name = "Upscale Image By"
    category = "image/upscaling"
    inputs = (
        Input("image", IMAGE),
        _method_input(),
        Input("scale_by", FLOAT, default=1.0, min=0.01, max=8.0, step=0.01),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, upscale_method: str, scale_by: float) -> tuple[Tensor]:
        width = max(1, round(image.shape[2] * scale_by))
        height = max(1, round(image.shape[1] * scale_by))
        return (scale_image(image, width, height, upscale_method),)


class ImageInvert(Node):
    """Invert the colours of images (1 - value)."""

    display_name = "Invert Image"
    category = "image"
    inputs = (Input("image", IMAGE),)
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor) -> tuple[Tensor]:
        return (1.0 - image,)


class ImageBatch(Node):
    """Join two image batches; image2 is resized (bilinear, centre crop) to image1's size."""

    display_name = "Batch Images"
    category = "image"
    inputs = (Input("image1", IMAGE), Input("image2", IMAGE))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image1: Tensor, image2: Tensor) -> tuple[Tensor]:
        if image1.shape[-1] != image2.shape[-1]:
            raise ValueError(
                f"cannot batch images with {image1.shape[-1]} and {image2.shape[-1]} channels; "
                "convert them to the same colour format first"
            )
        if image1.shape[1:3] != image2.shape[1:3]:
            image2 = scale_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2.to(image1)), dim=0),)


class EmptyImage(Node):
    """A batch of images filled with one RGB colour (0xRRGGBB)."""

    category = "image"
    inputs = (
        Input("width", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("height", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("batch_size", INT, default=1, min=1, max=4096),
        Input("color", INT, default=0, min=0, max=0xFFFFFF, step=1, extra={"display": "color"}),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, width: int, height: int, batch_size: int, color: int) -> tuple[Tensor]:
        rgb = torch.tensor(
            [(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32
        ) / 255.0
        return (rgb.expand(batch_size, height, width, 3).contiguous(),)


IMAGE_OPS_NODES: tuple[type[Node], ...] = (ImageScale, ImageScaleBy, ImageInvert, ImageBatch, EmptyImage)
