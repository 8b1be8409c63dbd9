"""``comfy.utils.tiled_scale``: run a function (an upscaler, a VAE) over overlapping tiles and blend them.

Tiles of ``tile_x`` x ``tile_y`` step by the tile size less ``overlap``; the last tile of a row or column is
moved back to end at the edge. Each tile's output is weighted by a ramp that fades over the overlap (times
``upscale_amount``) on every side, so seams blend; dividing by the summed weights gives the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["get_tiled_scale_steps", "tiled_scale"]


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    """How many tiles :func:`tiled_scale` runs per batch item (what packs give a ProgressBar)."""
    return math.ceil(height / max(tile_y - overlap, 1)) * math.ceil(width / max(tile_x - overlap, 1))


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile start positions covering ``size``; the last one ends at the edge."""
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _ramp_mask(height: int, width: int, feather: int, device: torch.device) -> Tensor:
    """Weights ``[1, 1, H, W]`` rising from the edges over ``feather`` pixels (never zero)."""
    mask = torch.ones((1, 1, height, width), device=device)
    for i in range(min(feather, height // 2, width // 2)):
        weight = (i + 1) / (feather + 1)
        mask[:, :, i, :] *= weight
        mask[:, :, height - 1 - i, :] *= weight
        mask[:, :, :, i] *= weight
        mask[:, :, :, width - 1 - i] *= weight
    return mask


def _scale_one(item: Tensor, function: Callable[[Tensor], Tensor], tile_x: int, tile_y: int, overlap: int,
               scale: float, out_channels: int, device: Any, pbar: Any) -> Tensor:
    """One batch item ``[1, C, H, W]`` through ``function`` tile by tile."""
    height, width = item.shape[-2:]
    out_h, out_w = round(height * scale), round(width * scale)
    out = torch.zeros((1, out_channels, out_h, out_w), device=device)
    weights = torch.zeros((1, 1, out_h, out_w), device=device)
    for y in _starts(height, tile_y, overlap):
        for x in _starts(width, tile_x, overlap):
            result = function(item[:, :, y:y + tile_y, x:x + tile_x]).to(device=device, dtype=out.dtype)
            oy, ox = round(y * scale), round(x * scale)
            th, tw = min(result.shape[-2], out_h - oy), min(result.shape[-1], out_w - ox)
            mask = _ramp_mask(th, tw, round(overlap * scale), out.device)
            out[:, :, oy:oy + th, ox:ox + tw] += result[:, :, :th, :tw] * mask
            weights[:, :, oy:oy + th, ox:ox + tw] += mask
            if pbar is not None:
                pbar.update(1)
    return out / weights.clamp_min(1e-8)


def tiled_scale(samples: Tensor, function: Callable[[Tensor], Tensor], tile_x: int = 64, tile_y: int = 64,
                overlap: int = 8, upscale_amount: float = 4, out_channels: int = 3, output_device: Any = "cpu",
                pbar: Any = None) -> Tensor:
    """``samples`` ``[B, C, H, W]`` through ``function`` in overlapping tiles: ``[B, out_channels, H*s, W*s]``."""
    items = [_scale_one(samples[b:b + 1], function, tile_x, tile_y, overlap, upscale_amount, out_channels,
                        output_device, pbar) for b in range(samples.shape[0])]
    return torch.cat(items, dim=0)
