"""Run an image-to-image model (an upscaler) over an image in overlapping tiles.

Tiles start every ``tile - overlap`` pixels along each axis, the last one pushed back to end at the image
border (ComfyUI's placement). Where two tiles overlap, the output switches from one to the other with a
linear ramp ``overlap / 2`` wide, centred in their overlap, so that every output pixel comes from tiles
whose input reaches at least ``overlap / 4`` pixels past it. A model whose receptive field reaches no
further than that gives exactly its whole-image output; a deeper one (a full RRDBNet) differs only
near the seams, softly blended.

Out of memory on a tile: the tile size halves (the work restarts) down to ``min_tile``, then
:class:`TileOutOfMemory` says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ComfyUI's tile and overlap for ImageUpscaleWithModel, and the smallest tile it halves down to.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
MIN_TILE = 128

TileModel = Callable[[Tensor], Tensor]
#: Called after each tile with (tiles done, tiles in all).
TileProgress = Callable[[int, int], None]


class TileOutOfMemory(RuntimeError):
    """Even the smallest tile did not fit in the device's memory."""


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one axis start: every ``tile - overlap``, the last one ending at ``size``."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def _axis_weights(starts: list[int], tile: int, size: int, overlap: int, scale: int) -> list[Tensor]:
    """Each tile's 1-D blend weights over its own output span (length ``min(tile, size) * scale``)."""
    span = min(tile, size)
    half_ramp = overlap / 4 * scale
    centres = [(nxt + prev + span) / 2 * scale for prev, nxt in zip(starts, starts[1:], strict=False)]
    weights = []
    for index, start in enumerate(starts):
        x = torch.arange(span * scale, dtype=torch.float64) + start * scale + 0.5
        weight = torch.ones_like(x)
        if index > 0:
            weight *= _ramp(x - centres[index - 1], half_ramp)
        if index < len(starts) - 1:
            weight *= 1 - _ramp(x - centres[index], half_ramp)
        weights.append(weight)
    return weights


def _ramp(distance: Tensor, half_width: float) -> Tensor:
    """0 before the seam's ramp, 1 after it, linear across ``2 * half_width`` around the seam."""
    if half_width <= 0:
        return (distance >= 0).to(distance.dtype)
    return ((distance + half_width) / (2 * half_width)).clamp(0, 1)


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many tiles one image of ``height x width`` takes."""
    return len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))


def upscale_tiled(image: Tensor, model: TileModel, scale: int, tile: int = DEFAULT_TILE,
                  overlap: int = DEFAULT_OVERLAP, on_tile: TileProgress | None = None) -> Tensor:
    """``model`` over ``image`` [B, C, H, W] in tiles; the blended output [B, C', H*scale, W*scale].

    ``tile`` must be at least ``2 * overlap`` (so that only two tiles blend at any pixel).
    """
    if overlap < 0 or tile < 2 * overlap or tile < 1:
        raise ValueError(f"tile {tile} must be at least 2 * overlap ({overlap}) and overlap at least 0")
    batch, _, height, width = image.shape
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_weights = _axis_weights(rows, tile, height, overlap, scale)
    col_weights = _axis_weights(cols, tile, width, overlap, scale)
    total, done = batch * len(rows) * len(cols), 0
    output: Tensor | None = None
    for b in range(batch):
        for top, row_weight in zip(rows, row_weights, strict=True):
            for left, col_weight in zip(cols, col_weights, strict=True):
                piece = image[b:b + 1, :, top:top + tile, left:left + tile]
                result = model(piece).float()
                if output is None:
                    output = result.new_zeros(batch, result.shape[1], height * scale, width * scale)
                weight = (row_weight[:, None] * col_weight[None, :]).to(result)
                output[b:b + 1, :, top * scale:top * scale + result.shape[-2],
                       left * scale:left * scale + result.shape[-1]] += result * weight
                done += 1
                if on_tile is not None:
                    on_tile(done, total)
    assert output is not None
    return output


def upscale_tiled_shrinking(image: Tensor, model: TileModel, scale: int, tile: int = DEFAULT_TILE,
                            overlap: int = DEFAULT_OVERLAP, min_tile: int = MIN_TILE,
                            on_tile: TileProgress | None = None,
                            on_shrink: Callable[[int], None] | None = None) -> Tensor:
    """:func:`upscale_tiled`, halving the tile after a device out-of-memory error down to ``min_tile``."""
    while True:
        try:
            return upscale_tiled(image, model, scale, tile, overlap, on_tile)
        except torch.OutOfMemoryError as exc:
            if tile // 2 < max(min_tile, 2 * overlap):
                raise TileOutOfMemory(f"out of memory even with {tile}px tiles (the smallest is {min_tile}px)"
                                      ) from exc
            tile //= 2
            if on_shrink is not None:
                on_shrink(tile)
