"""Torch-backed SDK for the upscale-model nodes: loading an UPSCALE_MODEL and running it in tiles.

A node imports this module inside ``run`` (``from engine.sdk import upscale``). The UPSCALE_MODEL value on
an edge is a :class:`~engine.models.handles.FileRef` (which file); the loaded spandrel model is cached by
:mod:`engine.models.upscale`, and the tiling lives in :mod:`engine.backend.tiled_upscale`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from engine.backend.tiled_upscale import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    MIN_TILE,
    TileOutOfMemory,
    tile_count,
    upscale_tiled_shrinking,
)
from engine.errors import OutOfMemory
from engine.models.handles import FileRef
from engine.models.upscale import UpscaleModelError, describe, load_upscale_model, place

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE", "MIN_TILE", "UpscaleModelError", "describe_file", "tile_count",
           "upscale_image"]


def describe_file(path: Path) -> tuple[FileRef, str]:
    """Load (and cache) the upscale model in ``path``: its handle and a one-line description.

    Raises UpscaleModelError (a ModelError) naming the file when it is no upscale model spandrel knows.
    """
    ref = FileRef.of(path)
    return ref, describe(load_upscale_model(ref))


def upscale_image(ref: FileRef, image: Tensor, device: torch.device, dtype: torch.dtype, *,
                  tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, min_tile: int = MIN_TILE,
                  on_tile: Callable[[int, int], None] | None = None,
                  on_shrink: Callable[[int], None] | None = None) -> Tensor:
    """IMAGE [B, H, W, C] in 0..1 through the model of ``ref``, tiled; IMAGE [B, H*s, W*s, C] in 0..1 on the CPU.

    The model runs on ``device`` in ``dtype`` (fp32 where its architecture has no half precision).
    Raises OutOfMemory when even ``min_tile`` pixel tiles do not fit.
    """
    descriptor = load_upscale_model(ref)
    run_dtype = place(descriptor, device, dtype)
    pixels = image.movedim(-1, 1).to(device=device, dtype=run_dtype).contiguous()  # NCHW, not channels-last
    try:
        with torch.inference_mode():
            upscaled = upscale_tiled_shrinking(pixels, descriptor, descriptor.scale, tile, overlap, min_tile,
                                               on_tile, on_shrink)
    except TileOutOfMemory as exc:
        raise OutOfMemory(f"upscaling with {ref.name}: {exc}; free memory (unload models) or upscale a "
                          "smaller image") from exc
    return upscaled.clamp(0, 1).movedim(1, -1).to(device="cpu", dtype=torch.float32)
