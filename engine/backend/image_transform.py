"""Geometric IMAGE transforms: scale to a pixel budget or a longest side, crop, stitch, rotate, flip,
resize-and-pad, and batch slicing/rebatching (ComfyUI's image transform nodes).

IMAGE tensors are float ``[B, H, W, C]`` in 0..1. Resampling goes through
:func:`engine.backend.imaging.scale_image` (ComfyUI's upscale methods, clamped to 0..1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.imaging import scale_image

__all__ = [
    "FLIP_METHODS", "ROTATIONS", "SPACING_COLORS", "STITCH_DIRECTIONS",
    "crop_image", "flip_image", "image_from_batch", "rebatch_images", "repeat_image_batch", "resize_and_pad",
    "rotate_image", "scale_to_max_dimension", "scale_to_total_pixels", "stitch_images",
]

#: ImageRotate's choices and the clockwise quarter turns each means.
ROTATIONS: dict[str, int] = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}
#: ImageFlip's choices and the IMAGE dim each flips (x-axis: rows, y-axis: columns).
FLIP_METHODS: dict[str, int] = {"x-axis: vertically": 1, "y-axis: horizontally": 2}
STITCH_DIRECTIONS: tuple[str, ...] = ("right", "down", "left", "up")
#: ImageStitch's spacing colours: one grey level, or an RGB triple.
SPACING_COLORS: dict[str, float | tuple[float, float, float]] = {
    "white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
}


def _checked_size(width: int, height: int, what: str) -> tuple[int, int]:
    if width < 1 or height < 1:
        raise ValueError(f"{what} gives a {width}x{height} image; raise the target size")
    return width, height


def scale_to_total_pixels(image: Tensor, method: str, megapixels: float, resolution_steps: int = 1) -> Tensor:
    """Resize to about ``megapixels`` * 1024^2 pixels, keeping the aspect ratio.

    Each side is rounded to a multiple of ``resolution_steps``.
    """
    height, width = image.shape[1], image.shape[2]
    factor = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    new_w = round(width * factor / resolution_steps) * resolution_steps
    new_h = round(height * factor / resolution_steps) * resolution_steps
    new_w, new_h = _checked_size(int(new_w), int(new_h), f"{megapixels} megapixels in steps of {resolution_steps}")
    return scale_image(image, new_w, new_h, method)


def scale_to_max_dimension(image: Tensor, method: str, largest_size: int) -> Tensor:
    """Resize so the longer side is ``largest_size`` (a square becomes largest_size x largest_size)."""
    height, width = image.shape[1], image.shape[2]
    if height > width:
        new_w, new_h = round(width / height * largest_size), largest_size
    elif width > height:
        new_w, new_h = largest_size, round(height / width * largest_size)
    else:
        new_w = new_h = largest_size
    new_w, new_h = _checked_size(new_w, new_h, f"largest_size {largest_size}")
    return scale_image(image, new_w, new_h, method)


def crop_image(image: Tensor, width: int, height: int, x: int, y: int) -> Tensor:
    """The ``width`` x ``height`` region at (x, y); the corner is clamped inside the image and the
    region is cut off at the image's edges."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return image[:, y : y + height, x : x + width, :]


def rotate_image(image: Tensor, rotation: str) -> Tensor:
    """Rotate clockwise by a whole number of quarter turns (ImageRotate's ``rotation`` names)."""
    if rotation not in ROTATIONS:
        raise ValueError(f"unknown rotation {rotation!r}; use one of {', '.join(ROTATIONS)}")
    return torch.rot90(image, k=ROTATIONS[rotation], dims=(2, 1))


def flip_image(image: Tensor, method: str) -> Tensor:
    """Mirror top-bottom (``x-axis: vertically``) or left-right (``y-axis: horizontally``)."""
    if method not in FLIP_METHODS:
        raise ValueError(f"unknown flip method {method!r}; use one of {', '.join(FLIP_METHODS)}")
    return torch.flip(image, dims=(FLIP_METHODS[method],))


def resize_and_pad(image: Tensor, target_width: int, target_height: int, padding_color: str,
                   method: str) -> Tensor:
    """Fit the image inside the target size (aspect kept) and centre it on white or black."""
    batch, height, width, channels = image.shape
    factor = min(target_width / width, target_height / height)
    new_w, new_h = _checked_size(int(width * factor), int(height * factor), "the fitted size")
    resized = scale_image(image, new_w, new_h, method)
    fill = 0.0 if padding_color == "black" else 1.0
    out = torch.full((batch, target_height, target_width, channels), fill, dtype=image.dtype, device=image.device)
    top, left = (target_height - new_h) // 2, (target_width - new_w) // 2
    out[:, top : top + new_h, left : left + new_w, :] = resized
    return out


def repeat_image_batch(image: Tensor, amount: int) -> Tensor:
    """The whole batch repeated ``amount`` times (1 2 -> 1 2 1 2)."""
    return image.repeat(amount, 1, 1, 1)


def image_from_batch(image: Tensor, batch_index: int, length: int) -> Tensor:
    """``length`` images from ``batch_index``; both are clamped to the batch."""
    start = min(image.shape[0] - 1, batch_index)
    count = min(image.shape[0] - start, length)
    return image[start : start + count].clone()


def rebatch_images(images: list[Tensor], batch_size: int) -> list[Tensor]:
    """Split a list of batches into batches of ``batch_size`` images, in order.

    A batch is cut short where the next image has another size (they cannot share a tensor).
    """
    singles = [image[i : i + 1] for image in images for i in range(image.shape[0])]
    out: list[Tensor] = []
    group: list[Tensor] = []
    for single in singles:
        if group and (len(group) == batch_size or single.shape[1:] != group[0].shape[1:]):
            out.append(torch.cat(group, dim=0))
            group = []
        group.append(single)
    if group:
        out.append(torch.cat(group, dim=0))
    return out


def _extend_batch(image: Tensor, size: int) -> Tensor:
    """Repeat the last image until the batch has ``size`` images."""
    missing = size - image.shape[0]
    return image if missing <= 0 else torch.cat([image, image[-1:].repeat(missing, 1, 1, 1)])


def _pad_centered(image: Tensor, dim: int, size: int, value: float) -> Tensor:
    """Pad dim 1 (height) or 2 (width) on both sides to ``size``; the odd pixel goes after."""
    extra = size - image.shape[dim]
    if extra <= 0:
        return image
    before, after = extra // 2, extra - extra // 2
    pads = (0, 0, before, after) if dim == 2 else (0, 0, 0, 0, before, after)
    return F.pad(image, pads, mode="constant", value=value)


def _add_channels(image: Tensor, channels: int) -> Tensor:
    """Append opaque (1.0) channels up to ``channels``."""
    missing = channels - image.shape[-1]
    if missing <= 0:
        return image
    ones = torch.ones(*image.shape[:-1], missing, dtype=image.dtype, device=image.device)
    return torch.cat([image, ones], dim=-1)


def _spacing(like: Tensor, height: int, width: int, color: float | tuple[float, float, float]) -> Tensor:
    """A spacer of ``like``'s batch and channels filled with ``color`` (alpha 1 when there are 4)."""
    channels = like.shape[-1]
    out = torch.zeros(like.shape[0], height, width, channels, dtype=like.dtype, device=like.device)
    if isinstance(color, tuple):
        for index, value in enumerate(color[:channels]):
            out[..., index] = value
    else:
        out[..., : min(3, channels)] = color
    if channels == 4:
        out[..., 3] = 1.0
    return out


def _match_size(image1: Tensor, image2: Tensor, horizontal: bool) -> Tensor:
    """Resize image2 (lanczos) to image1's height (side by side) or width (stacked), keeping its aspect."""
    h1, w1 = image1.shape[1], image1.shape[2]
    aspect = image2.shape[2] / image2.shape[1]
    if horizontal:
        width, height = int(h1 * aspect), h1
    else:
        width, height = w1, int(w1 / aspect)
    return scale_image(image2, *_checked_size(width, height, "matching image2's size"), "lanczos")


def stitch_images(image1: Tensor, image2: Tensor | None, direction: str, match_image_size: bool,
                  spacing_width: int, spacing_color: str) -> Tensor:
    """Put image2 to the right of, below, left of or above image1, with an optional spacer.

    Batches are extended to the longer one by repeating their last image. Without
    ``match_image_size`` the shorter image is centred and padded with the spacing colour's grey
    level (0 for red/green/blue); channel counts are evened out with opaque channels.
    """
    if image2 is None:
        return image1
    if direction not in STITCH_DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use one of {', '.join(STITCH_DIRECTIONS)}")
    color = SPACING_COLORS[spacing_color]
    horizontal = direction in ("left", "right")
    batch = max(image1.shape[0], image2.shape[0])
    image1, image2 = _extend_batch(image1, batch), _extend_batch(image2, batch)
    if match_image_size:
        image2 = _match_size(image1, image2, horizontal)
    else:
        dim = 1 if horizontal else 2
        size = max(image1.shape[dim], image2.shape[dim])
        fill = 0.0 if isinstance(color, tuple) else color
        image1, image2 = _pad_centered(image1, dim, size, fill), _pad_centered(image2, dim, size, fill)
    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = _add_channels(image1, channels), _add_channels(image2, channels)
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing_width > 0:
        spacing_width += spacing_width % 2
        if horizontal:
            spacer = _spacing(image1, max(image1.shape[1], image2.shape[1]), spacing_width, color)
        else:
            spacer = _spacing(image1, spacing_width, max(image1.shape[2], image2.shape[2]), color)
        parts.insert(1, spacer)
    return torch.cat(parts, dim=2 if horizontal else 1)
