"""T2I-Adapters during sampling: the residual lists an adapter gives a batched UNet forward.

As ComfyUI does, the hint is fitted (centre crop, nearest-exact) to the latent size x 8 rounded up to a
multiple of the adapter's unshuffle factor, averaged to one channel for one-channel adapters, and run
through the adapter once per size for the sampling run (the features depend on the hint alone); each
forward gets the cached features tiled to its rows. Strength, the active window and chaining are the
ControlNets' (:mod:`engine.backend.control_apply`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from engine.backend.t2i_adapter import T2IAdapter

__all__ = ["AdapterRun"]

Fit = Callable[[Tensor, int, int], Tensor]
Lists = dict[str, list[Tensor | None]]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def match_adapter_channels(hint: Tensor, channels: int) -> Tensor:
    """``hint`` ``[B, C, H, W]`` with the adapter's channel count (mean to one; grey to RGB; RGBA to RGB)."""
    if hint.shape[1] == channels:
        return hint
    if channels == 1:
        return hint[:, :3].mean(dim=1, keepdim=True)
    if hint.shape[1] == 1:
        return hint.expand(-1, channels, -1, -1)
    if hint.shape[1] > channels:
        return hint[:, :channels]
    raise ValueError(f"this T2I-Adapter takes {channels}-channel hint images, got {hint.shape[1]} channels")


def _rows(tensor: Tensor | None, per: int, batch: int) -> Tensor | None:
    """The hint batch repeated (or cut) to each entry's ``per`` rows, for ``batch`` rows in all."""
    if tensor is None:
        return None
    if tensor.shape[0] != per:
        reps = -(-per // tensor.shape[0])
        tensor = tensor.repeat(reps, 1, 1, 1)[:per]
    return tensor.repeat(batch // per, 1, 1, 1)


class AdapterRun:
    """The adapters' features of one sampling run, cached per (spec, size, device, dtype).

    ``fit(hint, height, width)`` resizes a hint; ``num_res_blocks`` is the UNet's blocks per level
    (where SD1/SD2 adapter features go)."""

    def __init__(self, fit: Fit, num_res_blocks: int = 2) -> None:
        self.fit = fit
        self.num_res_blocks = num_res_blocks
        self._cache: dict[tuple[Hashable, int, int, torch.device, torch.dtype], Lists] = {}

    def residuals(self, key: Hashable, hint: Tensor, adapter: T2IAdapter, x: Tensor, per: int) -> Lists:
        """Unscaled residual lists for the rows of ``x`` (``per`` rows per conditioning entry)."""
        dtype = next(adapter.parameters()).dtype
        factor = adapter.config.unshuffle
        height, width = _round_up(x.shape[-2] * 8, factor), _round_up(x.shape[-1] * 8, factor)
        cache_key = (key, height, width, x.device, dtype)
        lists = self._cache.get(cache_key)
        if lists is None:
            fitted = self.fit(hint.to(device=x.device, dtype=torch.float32), height, width)
            fitted = match_adapter_channels(fitted, adapter.hint_channels).to(dtype)
            with torch.no_grad():
                lists = adapter.residuals(adapter(fitted), self.num_res_blocks)
            self._cache[cache_key] = lists
        return {name: [_rows(t, per, x.shape[0]) for t in tensors] for name, tensors in lists.items()}
