"""unCLIP image-embedding noise augmentation and SDXL Revision's pooled vector.

The noise augmentor (ComfyUI's ``CLIPEmbeddingNoiseAugmentation``, diffusers' ``StableUnCLIPImageNormalizer``
plus a ``squaredcos_cap_v2`` DDPM schedule of 1000 steps): the embedding is normalised with the data
stats (SDXL's are mean 0, std 1), noised as ``sqrt(acp[t]) x + sqrt(1 - acp[t]) noise`` at
``t = round((1000 - 1) * noise_augmentation)``, then un-normalised; ``t`` also gets a sinusoidal
embedding (cos half first). Even ``t = 0`` adds a little noise (``sqrt(1 - acp[0])`` is about 6e-3).

Randomness: the noise of an unCLIP entry is ``torch.randn`` of a CPU generator seeded with the
sampler's seed - 10 (ComfyUI's seeding), so a run is reproducible. When several image embeddings take
part (several unCLIP entries, or a batch of images), the strength-weighted noised embeddings are summed
and noised once more at level 0 with the next draw of that generator (ComfyUI draws it from the global
RNG right after the last entry's draw, which on the CPU is the same numbers).

SD2 unCLIP models take the whole ``[noised embeds, level embedding]`` vector as their adm input (zeros
without unCLIP entries). SDXL Revision (ComfyUI's ``sdxl_pooled``): an entry with ``unclip_conditioning``
uses the image part as its pooled vector instead of the text encoder's ``pooled_output``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["MAX_NOISE_LEVEL", "UNCLIP_SEED_OFFSET", "noise_augment", "noise_level", "schedule", "unclip_adm",
           "unclip_pooled"]

MAX_NOISE_LEVEL = 1000
#: ComfyUI seeds the augmentation noise with the sampler's seed minus this.
UNCLIP_SEED_OFFSET = 10


def schedule(steps: int = MAX_NOISE_LEVEL) -> tuple[Tensor, Tensor]:
    """``(sqrt(acp), sqrt(1 - acp))`` of the ``squaredcos_cap_v2`` schedule (float64 math, float32 out)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
                         dtype=torch.float64)
    acp = torch.cumprod(1.0 - betas, dim=0)
    return acp.sqrt().float(), (1.0 - acp).sqrt().float()


def noise_level(noise_augmentation: float) -> int:
    """The schedule step of a ``noise_augmentation`` in 0..1."""
    return round((MAX_NOISE_LEVEL - 1) * noise_augmentation)


def _level_embedding(level: int, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = float(level) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)])[None, :]


def noise_augment(embeds: Tensor, level: int, noise: Tensor, mean: Tensor | None = None,
                  std: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(noised embeds, level embedding)`` of ``[B, D]`` embeds at schedule step ``level`` with ``noise``."""
    sqrt_acp, sqrt_one_minus = schedule()
    mean = torch.zeros(embeds.shape[-1]) if mean is None else mean
    std = torch.ones(embeds.shape[-1]) if std is None else std
    x = (embeds.float() - mean) / std
    z = sqrt_acp[level] * x + sqrt_one_minus[level] * noise.to(x)
    return z * std + mean, _level_embedding(level, embeds.shape[-1]).expand(embeds.shape[0], -1)


def unclip_adm(entries: Sequence[Mapping[str, Any]], seed: int) -> Tensor:
    """The unCLIP adm vector ``[1, 2 D]`` (noised image embeds, then the noise level's embedding, each
    strength-weighted) from ``unclip_conditioning`` entries (each with ``clip_vision_output``,
    ``strength``, ``noise_augmentation``) and the sampler's seed. SD2 unCLIP models take all of it."""
    generator = torch.Generator().manual_seed(seed - UNCLIP_SEED_OFFSET)
    parts: list[Tensor] = []
    for entry in entries:
        weight = float(entry["strength"])
        level = noise_level(float(entry["noise_augmentation"]))
        for row in entry["clip_vision_output"].image_embeds.float():
            generator.manual_seed(seed - UNCLIP_SEED_OFFSET)
            noise = torch.randn(1, row.shape[-1], generator=generator)
            noised, level_emb = noise_augment(row[None, :], level, noise)
            parts.append(torch.cat([noised, level_emb], dim=1) * weight)
    if not parts:
        raise ValueError("unclip_conditioning holds no image embeddings")
    if len(parts) == 1:
        return parts[0]
    merged = torch.stack(parts).sum(0)
    dim = merged.shape[-1] // 2
    noised, level_emb = noise_augment(merged[:, :dim], 0, torch.randn((1, dim), generator=generator))
    return torch.cat([noised, level_emb], dim=1)


def unclip_pooled(entries: Sequence[Mapping[str, Any]], seed: int) -> Tensor:
    """SDXL Revision's pooled vector ``[1, D]``: the image part of :func:`unclip_adm` (ComfyUI's sdxl_pooled)."""
    return unclip_adm(entries, seed)[:, :entries[0]["clip_vision_output"].image_embeds.shape[-1]]
