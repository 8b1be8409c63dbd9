"""Token merging for Stable Diffusion (Bolya & Hoffman 2023, "Token Merging for Fast Stable Diffusion").

:func:`merge_functions` pairs the tokens of a self-attention input the paper's way ("bipartite soft
matching, random 2d"): the image is cut into ``sy x sx`` cells, one random token per cell is a
destination, every other token a source; the ``r`` sources most similar (cosine) to their best
destination are averaged into it. ``merge`` shrinks ``[B, N, C]`` to ``[B, N - r, C]`` (unmerged
sources first, then destinations); ``unmerge`` puts every token back in its place, a merged source
taking its destination's value. Written from the paper's description; ComfyUI's TomePatchModel
applies the same steps (facts only, no code copied). Destinations are drawn from ``generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

TokenFn = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def merge_functions(x: Tensor, ratio: float, original_shape: tuple[int, ...],
                    generator: torch.Generator | None = None) -> tuple[TokenFn, TokenFn]:
    """``(merge, unmerge)`` for the tokens ``x`` ``[B, N, C]`` of a UNet whose input is ``original_shape``.

    Only full-resolution tokens are merged (as ComfyUI's max_downsample 1): at a deeper level both
    functions are the identity, as they are when ``int(N * ratio)`` is 0.
    """
    height, width = int(original_shape[-2]), int(original_shape[-1])
    downsample = math.ceil(math.sqrt((height * width) // x.shape[1]))
    if downsample > 1:
        return _identity, _identity
    width, height = math.ceil(width / downsample), math.ceil(height / downsample)
    return bipartite_merge(x, width, height, 2, 2, int(x.shape[1] * ratio), generator)


def _destination_order(h: int, w: int, sy: int, sx: int, device: torch.device,
                       generator: torch.Generator | None) -> tuple[Tensor, int]:
    """Token indices, destinations first (one random token per ``sy x sx`` cell), and how many are."""
    cells_h, cells_w = h // sy, w // sx
    choice = torch.randint(sy * sx, (cells_h, cells_w, 1), generator=generator).to(device)
    marks = torch.zeros(cells_h, cells_w, sy * sx, dtype=torch.int64, device=device)
    marks.scatter_(2, choice, -1)
    marks = marks.view(cells_h, cells_w, sy, sx).transpose(1, 2).reshape(cells_h * sy, cells_w * sx)
    if marks.shape != (h, w):  # cells that do not fit keep their tokens as sources
        full = torch.zeros(h, w, dtype=torch.int64, device=device)
        full[:cells_h * sy, :cells_w * sx] = marks
        marks = full
    return marks.reshape(1, -1, 1).argsort(dim=1, stable=True), cells_h * cells_w


def bipartite_merge(metric: Tensor, w: int, h: int, sx: int, sy: int, r: int,
                    generator: torch.Generator | None = None) -> tuple[TokenFn, TokenFn]:
    """``(merge, unmerge)`` removing ``r`` of the ``h * w`` tokens of ``metric`` ``[B, N, C]``."""
    batch, tokens, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return _identity, _identity
    with torch.no_grad():
        order, n_dst = _destination_order(h, w, sy, sx, metric.device, generator)
        src_pos, dst_pos = order[:, n_dst:, :], order[:, :n_dst, :]

        def split(x: Tensor) -> tuple[Tensor, Tensor]:
            c = x.shape[-1]
            return (torch.gather(x, 1, src_pos.expand(x.shape[0], tokens - n_dst, c)),
                    torch.gather(x, 1, dst_pos.expand(x.shape[0], n_dst, c)))

        src, dst = split(metric / metric.norm(dim=-1, keepdim=True))
        r = min(src.shape[1], r)
        best, best_dst = (src @ dst.transpose(-1, -2)).max(dim=-1)
        ranked = best.argsort(dim=-1, descending=True)[..., None]
        kept, moved = ranked[..., r:, :], ranked[..., :r, :]
        moved_dst = torch.gather(best_dst[..., None], -2, moved)

    def merge(x: Tensor) -> Tensor:
        source, target = split(x)
        n, count, c = source.shape
        unmerged = torch.gather(source, -2, kept.expand(n, count - r, c))
        merged = torch.gather(source, -2, moved.expand(n, r, c))
        target = target.scatter_reduce(-2, moved_dst.expand(n, r, c), merged, reduce="mean")
        return torch.cat([unmerged, target], dim=1)

    def unmerge(x: Tensor) -> Tensor:
        n_kept = kept.shape[1]
        unmerged, target = x[..., :n_kept, :], x[..., n_kept:, :]
        c = unmerged.shape[-1]
        out = torch.zeros(batch, tokens, c, device=x.device, dtype=x.dtype)
        out.scatter_(-2, dst_pos.expand(batch, n_dst, c), target)
        sources = src_pos.expand(batch, src_pos.shape[1], 1)
        out.scatter_(-2, torch.gather(sources, 1, kept).expand(batch, n_kept, c), unmerged)
        out.scatter_(-2, torch.gather(sources, 1, moved).expand(batch, r, c),
                     torch.gather(target, -2, moved_dst.expand(batch, r, c)))
        return out

    return merge, unmerge
