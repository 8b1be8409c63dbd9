"""Latent formats: how a VAE latent (what LATENT sockets carry) maps to the latent a diffusion model samples.

SD1/SD2/SDXL scale the whole latent by one factor (0.18215 / 0.13025); SD3 and Flux (16-channel VAEs) shift it
first: ``model = (vae - shift) * scale`` (the ``shift_factor`` and ``scaling_factor`` of their VAE configs:
SD3 0.0609 and 1.5305, Flux 0.1159 and 0.3611). Playground v2.5 (an EDM-trained
SDXL model) normalises each channel first: ``model = (vae - mean) * scale / std`` with the channel
means and deviations its authors published in the model's ``vae/config.json`` (``latents_mean``,
``latents_std``, ``scaling_factor``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FLUX", "LatentFormat", "PLAYGROUND_V2_5", "SD3", "latent_format"]


@dataclass(frozen=True)
class LatentFormat:
    """``scale`` alone (SD), with a ``shift`` (SD3, Flux), or per-channel ``mean`` / ``std`` (Playground v2.5)."""

    scale: float
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    shift: float = 0.0

    def to_model(self, latent: Tensor) -> Tensor:
        """The VAE latent in the model's space (ComfyUI's ``process_in``)."""
        if self.mean is None or self.std is None:
            return (latent - self.shift) * self.scale
        mean, std = self._channels(self.mean, latent), self._channels(self.std, latent)
        return (latent - mean) * self.scale / std

    def to_vae(self, latent: Tensor) -> Tensor:
        """The model's latent back in the VAE's space (ComfyUI's ``process_out``)."""
        if self.mean is None or self.std is None:
            return latent / self.scale + self.shift
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

#: The 16-channel latents of SD3 / SD3.5 and of Flux.
SD3 = LatentFormat(scale=1.5305, shift=0.0609)
FLUX = LatentFormat(scale=0.3611, shift=0.1159)

_NAMED = {"playground_v2.5": PLAYGROUND_V2_5, "sd3": SD3, "flux": FLUX}


def latent_format(name: str | None, family_scale: float) -> LatentFormat:
    """The format named by a model-sampling choice, else the family's plain scale."""
    if name is None:
        return LatentFormat(scale=family_scale)
    if name not in _NAMED:
        raise ValueError(f"unknown latent format {name!r}; Loom knows {', '.join(sorted(_NAMED))}")
    return _NAMED[name]
