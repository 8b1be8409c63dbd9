"""LATENT batches: joining, slicing and repeating, keeping ``batch_index`` and ``noise_mask`` in step.

``batch_index`` says which noise of a seeded batch each item gets (ComfyUI's rule), so functions that
reorder or repeat items keep it consistent. Nothing received is mutated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.latents import Latent, match_latent, repeat_to_batch

__all__ = ["batch_latents", "batch_noise_masks", "latent_from_batch", "repeat_latent_batch"]


def _mask_4d(mask: Tensor) -> Tensor:
    """A noise mask as ``[B, 1, H, W]`` (masks arrive as [H, W], [B, H, W] or [B, 1, H, W])."""
    if mask.ndim == 2:
        return mask[None, None]
    if mask.ndim == 3:
        return mask[:, None]
    return mask


def batch_noise_masks(first: Latent, second: Latent) -> Tensor | None:
    """The noise mask of two latents batched together; a side without one is fully masked (1)."""
    mask1, mask2 = first.get("noise_mask"), second.get("noise_mask")
    if mask1 is None and mask2 is None:
        return None
    batch1, batch2 = first["samples"].shape[0], second["samples"].shape[0]
    reference = _mask_4d(next(mask for mask in (mask1, mask2) if mask is not None))
    size = reference.shape[-2:]
    parts = []
    for mask, batch in ((mask1, batch1), (mask2, batch2)):
        if mask is None:
            parts.append(torch.ones((batch, 1, *size), dtype=reference.dtype, device=reference.device))
            continue
        mask = _mask_4d(mask).to(reference)
        if mask.shape[-2:] != size:
            mask = F.interpolate(mask, size=tuple(size), mode="bilinear")
        parts.append(repeat_to_batch(mask, batch))
    return torch.cat(parts, dim=0)


def _indices(latent: Latent) -> list[int]:
    """The latent's batch_index, or 0..B-1 when it has none."""
    index = latent.get("batch_index")
    return list(index) if index is not None else list(range(latent["samples"].shape[0]))


def batch_latents(first: Latent, second: Latent) -> Latent:
    """``first`` then ``second`` in one batch; ``second`` is resized to ``first``'s size when they differ."""
    samples = first["samples"]
    other = match_latent(samples, second["samples"], repeat_batch=False)
    out = dict(first)
    out["samples"] = torch.cat((samples, other), dim=0)
    # ComfyUI concatenates the indices as they are, so a seed gives the same noise here.
    out["batch_index"] = _indices(first) + _indices(second)
    mask = batch_noise_masks(first, second)
    if mask is not None:
        out["noise_mask"] = mask
    return out


def latent_from_batch(samples: Latent, batch_index: int, length: int) -> Latent:
    """``length`` items starting at ``batch_index`` (both clamped to the batch)."""
    latent = samples["samples"]
    batch = latent.shape[0]
    start = min(batch - 1, batch_index)
    stop = start + min(batch - start, length)
    out = dict(samples)
    out["samples"] = latent[start:stop].clone()
    mask = samples.get("noise_mask")
    if mask is not None:
        if mask.ndim >= 3 and mask.shape[0] > 1:
            out["noise_mask"] = repeat_to_batch(mask, batch)[start:stop].clone()
        else:
            out["noise_mask"] = mask.clone()
    out["batch_index"] = _indices(samples)[start:stop]
    return out


def repeat_latent_batch(samples: Latent, amount: int) -> Latent:
    """The batch repeated ``amount`` times; each copy gets its own noise indices."""
    latent = samples["samples"]
    out = dict(samples)
    out["samples"] = latent.repeat((amount,) + (1,) * (latent.ndim - 1))
    mask = samples.get("noise_mask")
    if mask is not None and mask.ndim >= 3 and mask.shape[0] > 1:
        mask = repeat_to_batch(mask, latent.shape[0])
        out["noise_mask"] = mask.repeat((amount,) + (1,) * (mask.ndim - 1))
    index = samples.get("batch_index")
    if index is not None:
        index = list(index)
        # ComfyUI's rule: each copy is offset by the span of the indices.
        offset = max(index) - min(index) + 1
        out["batch_index"] = [i + copy * offset for copy in range(amount) for i in index]
    return out
