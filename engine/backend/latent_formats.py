"""Latent formats: how a VAE latent (what LATENT sockets carry) maps to the latent a diffusion model samples.

SD1/SD2/SDXL scale the whole latent by one factor (0.18215 / 0.13025). Playground v2.5 (an EDM-trained
SDXL model) normalises each channel first: ``model = (vae - mean) * scale / std`` with the channel
means and deviations its authors published in the model's ``vae/config.json`` (``latents_mean``,
``latents_std``, ``scaling_factor``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LatentFormat", "PLAYGROUND_V2_5", "latent_format"]


@dataclass(frozen=True)
class LatentFormat:
    """``scale`` alone (SD), or per-channel ``mean`` / ``std`` too (Playground v2.5)."""

    scale: float
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_model(self, latent: Tensor) -> Tensor:
        """The VAE latent in the model's space (ComfyUI's ``process_in``)."""
        if self.mean is None or self.std is None:
            return latent * self.scale
        mean, std = self._channels(self.mean, latent), self._channels(self.std, latent)
        return (latent - mean) * self.scale / std

    def to_vae(self, latent: Tensor) -> Tensor:
        """The model's latent back in the VAE's space (ComfyUI's ``process_out``)."""
        if self.mean is None or self.std is None:
            return latent / self.scale
        mean, std = self._channels(self.mean, latent), self._channels(self.std, latent)
        return latent * std / self.scale + mean

    @staticmethod
    def _channels(values: tuple[float, ...], latent: Tensor) -> Tensor:
        if latent.shape[1] != len(values):
            raise ValueError(f"this latent format has {len(values)} channels but the latent has {latent.shape[1]}")
        return torch.tensor(values, dtype=latent.dtype, device=latent.device).reshape(1, -1, 1, 1)


#: Playground v2.5's latent normalisation (SDXL VAE, 4 channels).
PLAYGROUND_V2_5 = LatentFormat(scale=0.5, mean=(-1.6574, 1.886, -1.383, 2.5155),
                               std=(8.4927, 5.9022, 6.5498, 5.2299))

_NAMED = {"playground_v2.5": PLAYGROUND_V2_5}


def latent_format(name: str | None, family_scale: float) -> LatentFormat:
    """The format named by a model-sampling choice, else the family's plain scale."""
    if name is None:
        return LatentFormat(scale=family_scale)
    if name not in _NAMED:
        raise ValueError(f"unknown latent format {name!r}; Loom knows {', '.join(sorted(_NAMED))}")
    return _NAMED[name]
