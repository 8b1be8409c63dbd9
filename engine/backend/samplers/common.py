"""Sampler helpers: the ODE derivative, the ancestral step split, progress reports, the default noise
sources and churn, shared by every sampler module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from engine.backend.model_sampling import _expand
from engine.backend.noise import BrownianTreeNoiseSampler, NoiseSampler, SeededNoiseSampler

Denoiser = Callable[..., Tensor]
Callback = Callable[[dict[str, Any]], None]


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - denoised) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / _expand(sigma, x)


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split the step sigma_from -> sigma_to into a deterministic step to ``sigma_down`` and fresh noise
    of std ``sigma_up`` with sigma_down^2 + sigma_up^2 = sigma_to^2 (the DDPM ancestral step as a
    sigma split; ``eta`` scales the noise as DDIM's eta, Song et al. 2021)."""
    sigma_to = torch.as_tensor(sigma_to)
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _sigma_fn(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t_fn(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _report(callback: Callback | None, i: int, x: Tensor, sigma: Tensor, sigma_hat: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _noise_sampler(x: Tensor, seed: int | None, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    return noise_sampler if noise_sampler is not None else SeededNoiseSampler(x, seed)


def _brownian_sampler(
    x: Tensor, sigmas: Tensor, seed: int | None, noise_sampler: NoiseSampler | None, *, cpu: bool = True
) -> NoiseSampler:
    if noise_sampler is not None:
        return noise_sampler
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed, cpu=cpu)


class UncondTracker:
    """Keeps the latest uncond denoised prediction for the cfg++ samplers (Chung et al. 2024, "CFG++").

    :meth:`extra_args` adds ``on_guidance=self`` to the model's keyword arguments; the guided denoiser
    (:class:`engine.backend.guidance.CFGDenoiser`) calls it with each step's ``GuidanceStep``.
    :meth:`latest` is that step's ``uncond_denoised``; when there is none (the uncond pass was skipped
    at cfg 1, or the model is not a guided denoiser) it is the guided ``denoised`` itself, i.e. the
    unguided update. ComfyUI always runs the uncond pass for these samplers (it disables its cfg-1
    shortcut), so a pipeline matches it by building the denoiser with ``needs_uncond=True`` (see
    :func:`engine.backend.samplers.needs_uncond`).
    """

    def __init__(self) -> None:
        self.uncond: Tensor | None = None

    def __call__(self, step: Any, denoised: Tensor) -> None:
        self.uncond = getattr(step, "uncond_denoised", None)

    def extra_args(self, extra_args: dict[str, Any] | None) -> dict[str, Any]:
        return {**(extra_args or {}), "on_guidance": self}

    def latest(self, denoised: Tensor) -> Tensor:
        """The last uncond prediction seen (then forgotten), or ``denoised`` when none came."""
        uncond, self.uncond = self.uncond, None
        return denoised if uncond is None else uncond


def _churn_noise(
    x: Tensor, seed: int | None, noise_sampler: NoiseSampler | None, s_churn: float
) -> Callable[[], Tensor] | None:
    """The noise source for churn (drawn from once per churned step), or None without churn."""
    if s_churn <= 0:
        return None
    sampler = _noise_sampler(x, seed, noise_sampler)
    # churn draws without sigmas: SeededNoiseSampler ignores them; a custom sampler must accept None
    return lambda: sampler(None, None)  # type: ignore[arg-type]


def _churn(
    x: Tensor,
    sigma: Tensor,
    steps: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise: Callable[[], Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """Karras et al. 2022, Algorithm 2, lines 4-6: raise sigma by gamma and add matching noise."""
    if s_churn <= 0 or noise is None:
        return x, sigma
    gamma = min(s_churn / steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise() * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat
