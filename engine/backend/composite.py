"""Pasting one IMAGE onto another at an offset, through an optional MASK (ComfyUI's ImageCompositeMasked).

IMAGE is float ``[B, H, W, C]``; MASK is float ``[B, H, W]`` (any accepted rank), 1 = take the source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.masks import mask_3d

__all__ = ["composite_masked"]


def _with_alpha(image: Tensor) -> Tensor:
    return F.pad(image, (0, 1), value=1.0) if image.shape[-1] == 3 else image


def _match_channels(destination: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """Give an RGB image an opaque alpha channel when the other one has alpha."""
    if destination.shape[-1] == source.shape[-1]:
        return destination, source
    return _with_alpha(destination), _with_alpha(source)


def _batch(tensor: Tensor, size: int) -> Tensor:
    if tensor.shape[0] >= size:
        return tensor[:size]
    reps = -(-size // tensor.shape[0])
    return tensor.repeat((reps,) + (1,) * (tensor.ndim - 1))[:size]


def composite_masked(destination: Tensor, source: Tensor, x: int, y: int, mask: Tensor | None,
                     resize_source: bool) -> Tensor:
    """``source`` pasted onto a copy of ``destination`` at (x, y) through ``mask`` (resized to the source)."""
    destination, source = _match_channels(destination, source)
    out = destination.clone().movedim(-1, 1)
    src = source.to(out).movedim(-1, 1)
    if resize_source:
        src = F.interpolate(src, size=out.shape[-2:], mode="bilinear")
    src = _batch(src, out.shape[0])
    if mask is None:
        weight = torch.ones_like(src[:, :1])
    else:
        weight = F.interpolate(mask_3d(mask)[:, None].to(out), size=src.shape[-2:], mode="bilinear")
        weight = _batch(weight, src.shape[0])
    height = max(min(src.shape[-2], out.shape[-2] - y), 0)
    width = max(min(src.shape[-1], out.shape[-1] - x), 0)
    weight, src = weight[..., :height, :width], src[..., :height, :width]
    region = out[..., y:y + height, x:x + width]
    out[..., y:y + height, x:x + width] = src * weight + region * (1.0 - weight)
    return out.movedim(1, -1)
