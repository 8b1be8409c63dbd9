"""Re-cutting a list of LATENT batches into batches of a given size (ComfyUI's RebatchLatents).

The latents are taken in order; consecutive ones of the same height and width are joined and cut into
batches of ``batch_size`` (the last of each run of equal sizes may be smaller); a change of size
always starts a new batch. Each output latent has ``samples``, ``batch_index`` (kept from the input,
or the item's position in the whole list when the input had none) and ``noise_mask``, dropped when
it is all ones (no input had a mask there). Other keys of the inputs are not carried over.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.latents import LATENT_SCALE, Latent, repeat_to_batch

__all__ = ["rebatch_latents"]


@dataclass(frozen=True)
class _Run:
    """Items of one latent size: samples, their pixel-sized noise masks and their batch indices."""

    samples: Tensor
    masks: Tensor
    indices: list[int]

    def join(self, other: _Run) -> _Run:
        return _Run(torch.cat([self.samples, other.samples]), torch.cat([self.masks, other.masks.to(self.masks)]),
                    self.indices + other.indices)

    def cut(self, batch_size: int) -> Iterator[_Run]:
        for start in range(0, self.samples.shape[0], batch_size):
            end = start + batch_size
            yield _Run(self.samples[start:end], self.masks[start:end], self.indices[start:end])


def _noise_masks(latent: Latent) -> Tensor:
    """The latent's noise mask as ``[B, 1, H, W]`` at its pixel size (ones where it has none)."""
    samples = latent["samples"]
    batch, size = samples.shape[0], (samples.shape[-2] * LATENT_SCALE, samples.shape[-1] * LATENT_SCALE)
    mask = latent.get("noise_mask")
    if mask is None:
        return torch.ones((batch, 1, *size), dtype=torch.float32, device=samples.device)
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()
    if tuple(mask.shape[-2:]) != size:
        mask = F.interpolate(mask, size=size, mode="bilinear")
    return repeat_to_batch(mask, batch)


def _runs(latents: Sequence[Latent]) -> Iterator[_Run]:
    """The latents joined into runs of consecutive items of the same height and width."""
    current: _Run | None = None
    position = 0
    for latent in latents:
        samples = latent["samples"]
        indices = list(latent.get("batch_index", range(position, position + samples.shape[0])))
        position += len(indices)
        item = _Run(samples, _noise_masks(latent), indices)
        if current is None:
            current = item
        elif current.samples.shape[-2:] != samples.shape[-2:]:
            yield current
            current = item
        else:
            current = current.join(item)
    if current is not None:
        yield current


def rebatch_latents(latents: Sequence[Latent], batch_size: int) -> list[Latent]:
    """``latents`` re-cut into batches of ``batch_size`` items (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"RebatchLatents: batch_size is {batch_size}; it must be at least 1")
    out: list[Latent] = []
    for run in _runs(latents):
        for batch in run.cut(batch_size):
            latent: Latent = {"samples": batch.samples, "batch_index": batch.indices}
            if not bool((batch.masks == 1.0).all()):
                latent["noise_mask"] = batch.masks
            out.append(latent)
    return out
