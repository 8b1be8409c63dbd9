"""IMAGE arithmetic: scaling, inverting, batching and solid colours.

IMAGE tensors are float ``[B, H, W, C]`` in 0..1 (ComfyUI's convention); resampling works on
``[B, C, H, W]`` in :mod:`engine.backend.resample`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.backend.resample import resize

__all__ = ["batch_images", "fit_size", "invert_image", "scale_image", "scale_image_by", "scale_image_to",
           "solid_image"]


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


def scale_image_to(image: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resize to ``width x height``; a 0 in one keeps the aspect ratio, 0 in both returns ``image``."""
    if width == 0 and height == 0:
        return image
    width, height = fit_size(width, height, image.shape[2], image.shape[1])
    return scale_image(image, width, height, method, crop)


def scale_image_by(image: Tensor, factor: float, method: str) -> Tensor:
    """Resize by ``factor`` (each side rounded, at least 1 pixel)."""
    width = max(1, round(image.shape[2] * factor))
    height = max(1, round(image.shape[1] * factor))
    return scale_image(image, width, height, method)


def invert_image(image: Tensor) -> Tensor:
    """``1 - image``: the colours inverted."""
    return 1.0 - image


def batch_images(first: Tensor, second: Tensor) -> Tensor:
    """``first`` then ``second`` in one batch; ``second`` is resized (bilinear, centre crop) to ``first``'s size."""
    if first.shape[-1] != second.shape[-1]:
        raise ValueError(
            f"cannot batch images with {first.shape[-1]} and {second.shape[-1]} channels; "
            "convert them to the same colour format first"
        )
    if first.shape[1:3] != second.shape[1:3]:
        second = scale_image(second, first.shape[2], first.shape[1], "bilinear", "center")
    return torch.cat((first, second.to(first)), dim=0)


def solid_image(width: int, height: int, batch_size: int, color: int) -> Tensor:
    """``batch_size`` RGB images of ``width x height`` filled with ``color`` (0xRRGGBB)."""
    rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
    return rgb.expand(batch_size, height, width, 3).contiguous()
