"""LATENT_OPERATION values: functions ``latent -> latent`` applied to a latent or, before CFG, to the
guidance of each sampling step (ComfyUI's LatentOperationTonemapReinhard / LatentOperationSharpen).

Each operation is a small frozen dataclass with ``__call__(latent, **kwargs)``: immutable, hashable
and picklable, so it can sit in the output cache, in a MODEL handle and cross processes in cluster
mode. They take ComfyUI's calling convention (``operation(latent=tensor)``, extra keywords ignored),
so a custom pack's plain function works wherever one of these does. Latents are ``[B, C, H, W]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LatentOperation", "Sharpen", "TonemapReinhard", "apply_operation", "gaussian_kernel", "sharpen_kernel"]

#: A LATENT_OPERATION: called as ``operation(latent=tensor)``, returns a tensor of the same shape.
LatentOperation = Callable[..., Tensor]


def apply_operation(latent: dict[str, Any], operation: LatentOperation) -> dict[str, Any]:
    """A copy of the LATENT dict with ``operation`` applied to its samples (other keys kept)."""
    out = dict(latent)
    out["samples"] = operation(latent=latent["samples"])
    return out


def _channel_norm(latent: Tensor) -> Tensor:
    """The length of each pixel's channel vector, ``[B, 1, H, W]``."""
    return torch.linalg.vector_norm(latent, dim=1, keepdim=True)


@dataclass(frozen=True)
class TonemapReinhard:
    """Compress large latent magnitudes with Reinhard's tone map, keeping every pixel's direction.

    With ``m`` the length of a pixel's channel vector and ``top = (5 * std(m) + mean(m)) * multiplier``
    (statistics per batch item), the new length is ``m * top / (m + top)``, i.e. ComfyUI's
    ``(m / top) / (m / top + 1) * top``: lengths far below ``top`` barely change, none exceeds ``top``.
    """

    multiplier: float = 1.0

    def __call__(self, latent: Tensor, **kwargs: Any) -> Tensor:
        magnitude = _channel_norm(latent) + 1e-10
        dims = tuple(range(1, magnitude.ndim))
        top = (magnitude.std(dim=dims, keepdim=True) * 5 + magnitude.mean(dim=dims, keepdim=True)) * self.multiplier
        return latent / magnitude * (magnitude * top / (magnitude + top))


def gaussian_kernel(size: int, sigma: float, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """A ``size x size`` Gaussian over the square [-1, 1]^2 (not over pixel units), summing to 1."""
    axis = torch.linspace(-1.0, 1.0, size, dtype=torch.float32, device=device)
    squared = axis[:, None] ** 2 + axis[None, :] ** 2
    weights = torch.exp(-squared / (2.0 * sigma * sigma))
    return (weights / weights.sum()).to(dtype)


def sharpen_kernel(radius: int, sigma: float, alpha: float, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> Tensor:
    """An unsharp kernel: ``-10 * alpha`` times a Gaussian, with the centre raised so it sums to 1."""
    kernel = gaussian_kernel(2 * radius + 1, sigma, device=device) * (-10.0 * alpha)
    kernel[radius, radius] += 1.0 - kernel.sum()
    return kernel.to(dtype)


@dataclass(frozen=True)
class Sharpen:
    """Sharpen the direction of each pixel's channel vector, keeping its length (ComfyUI's latent sharpen).

    The latent is divided by its per-pixel length, convolved channel by channel with
    :func:`sharpen_kernel` over a reflected border of ``radius`` pixels, and multiplied back.
    """

    radius: int = 9
    sigma: float = 1.0
    alpha: float = 0.1

    def __call__(self, latent: Tensor, **kwargs: Any) -> Tensor:
        height, width = latent.shape[-2:]
        if self.radius >= min(height, width):
            raise ValueError(f"LatentOperationSharpen: sharpen_radius {self.radius} needs a latent larger than "
                             f"{self.radius} pixels a side, this one is {width}x{height}; lower sharpen_radius")
        luminance = _channel_norm(latent) + 1e-6
        channels = latent.shape[1]
        kernel = sharpen_kernel(self.radius, self.sigma, self.alpha, dtype=latent.dtype, device=latent.device)
        weight = kernel.expand(channels, 1, *kernel.shape)
        r = self.radius
        padded = F.pad(latent / luminance, (r, r, r, r), mode="reflect")
        return luminance * F.conv2d(padded, weight, groups=channels)
