"""MASK editing: feathering edges, combining two masks, cropping, and masks from an exact colour.

A MASK is float ``[B, H, W]`` (``[H, W]`` is accepted too); IMAGE is float ``[B, H, W, C]`` in 0..1.
The results match ComfyUI's comfy_extras/nodes_mask.py value for value, quirks included (see
:func:`feather_mask`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.backend.masks import mask_3d

__all__ = ["MASK_OPERATIONS", "color_to_mask", "crop_mask", "feather_mask", "mask_composite"]

#: MaskComposite's operations, in ComfyUI's order.
MASK_OPERATIONS: tuple[str, ...] = ("multiply", "add", "subtract", "and", "or", "xor")


def _ramp(size: int, near: int, far: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Per-index weights along one axis: ``near`` pixels rise from the start, ``far`` from the end.

    Index ``i < near`` gets ``(i + 1) / near``. The far ramp is ComfyUI's: step ``k`` (0 .. far - 1)
    scales index ``-k``, so the last index gets ``2 / far``, index ``size - far + 1`` gets 1, and
    index 0 (``-0``) gets ``1 / far`` on top of the near ramp.
    """
    weights = torch.ones(size, dtype=dtype, device=device)
    near, far = min(near, size), min(far, size)
    if near > 0:
        weights[:near] *= torch.arange(1, near + 1, dtype=dtype, device=device) / near
    if far > 0:
        steps = torch.arange(far, device=device)
        index = (-steps) % size  # distinct: 0, size - 1, size - 2, ...
        weights[index] = weights[index] * ((steps + 1).to(dtype) / far)
    return weights


def feather_mask(mask: Tensor, left: int, top: int, right: int, bottom: int) -> Tensor:
    """Fade the mask linearly towards its edges over ``left``/``top``/``right``/``bottom`` pixels."""
    out = mask_3d(mask).clone()
    height, width = out.shape[-2], out.shape[-1]
    columns = _ramp(width, left, right, out.dtype, out.device)
    rows = _ramp(height, top, bottom, out.dtype, out.device)
    return out * columns[None, None, :] * rows[None, :, None]


def _combine(destination: Tensor, source: Tensor, operation: str) -> Tensor:
    if operation == "multiply":
        return destination * source
    if operation == "add":
        return destination + source
    if operation == "subtract":
        return destination - source
    dst, src = destination.round().bool(), source.round().bool()
    if operation == "and":
        return (dst & src).float()
    if operation == "or":
        return (dst | src).float()
    if operation == "xor":
        return (dst ^ src).float()
    raise ValueError(f"unknown mask operation {operation!r}; use one of {', '.join(MASK_OPERATIONS)}")


def _same_batch(destination: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast a batch of one to the other's batch; other differing batches are an error."""
    if len(destination) == len(source):
        return destination, source
    if len(source) == 1:
        return destination, source.expand(len(destination), -1, -1)
    if len(destination) == 1:
        return destination.expand(len(source), -1, -1).clone(), source
    raise ValueError(f"destination has {len(destination)} masks and source {len(source)}; "
                     "give one of them a batch of 1 or the same batch")


def mask_composite(destination: Tensor, source: Tensor, x: int, y: int, operation: str) -> Tensor:
    """Combine ``source`` into ``destination`` with its top-left corner at ``(x, y)``; clamped to 0..1.

    and/or/xor treat each value rounded to 0 or 1. The part of ``source`` past the destination's edge
    is left out; a source placed wholly outside leaves the destination as it was (then clamped).
    """
    out, src = _same_batch(mask_3d(destination).clone(), mask_3d(source))
    bottom = min(y + src.shape[-2], out.shape[-2])
    right = min(x + src.shape[-1], out.shape[-1])
    if bottom > y and right > x:
        region = out[:, y:bottom, x:right]
        out[:, y:bottom, x:right] = _combine(region, src[:, : bottom - y, : right - x], operation)
    elif operation not in MASK_OPERATIONS:
        raise ValueError(f"unknown mask operation {operation!r}; use one of {', '.join(MASK_OPERATIONS)}")
    return out.clamp(0.0, 1.0)


def crop_mask(mask: Tensor, x: int, y: int, width: int, height: int) -> Tensor:
    """``mask[:, y:y + height, x:x + width]`` (cut at the mask's edges); ValueError when nothing is left."""
    mask = mask_3d(mask)
    if x >= mask.shape[-1] or y >= mask.shape[-2]:
        raise ValueError(f"the crop starts at x={x}, y={y}, outside the {mask.shape[-1]}x{mask.shape[-2]} mask; "
                         "use a smaller x / y")
    return mask[:, y : y + height, x : x + width]


def color_to_mask(image: Tensor, color: int) -> Tensor:
    """1 where a pixel's 8-bit RGB (each channel clamped, scaled by 255 and rounded) is exactly
    ``color`` (``0xRRGGBB``), else 0; alpha is ignored."""
    if image.shape[-1] < 3:
        raise ValueError(f"the image has {image.shape[-1]} channel(s); ImageColorToMask needs RGB")
    levels = (image[..., :3].clamp(0.0, 1.0) * 255.0).round().to(torch.int64)
    packed = (levels[..., 0] << 16) + (levels[..., 1] << 8) + levels[..., 2]
    return (packed == color).float()
