"""Samplers (and picklable sampler options) that only sampler-parameter nodes choose (they are not
KSampler names): LCM with upscaling between steps (SamplerLCMUpscale) and the "alternative" Euler
CFG++ (SamplerEulerCFGpp).

Both have the uniform signature of :class:`engine.backend.samplers.Sampler`. A sampler function with
``needs_uncond = True`` asks the pipeline to run the uncond pass even at cfg 1 (as ComfyUI's
``disable_cfg1_optimization``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.backend.guidance import GuidanceStep
from engine.backend.noise import NoiseSampler, check_seed
from engine.backend.resample import resize
from engine.backend.samplers.common import Callback, Denoiser, to_d


@dataclass(frozen=True)
class TauInterval:
    """SA-Solver's stochasticity ``tau(sigma)``: ``eta`` while ``end_sigma <= sigma <= start_sigma``, else 0
    (SamplerSASolver's sde_start_percent / sde_end_percent window)."""

    start_sigma: float
    end_sigma: float
    eta: float = 1.0

    def __call__(self, sigma: Tensor | float) -> float:
        if self.eta <= 0:
            return 0.0
        value = float(sigma)
        return self.eta if self.start_sigma >= value >= self.end_sigma else 0.0


@dataclass(frozen=True)
class PowerNoiseScaler:
    """ER-SDE's noise scaler of the reverse-time SDE: ``x ** (eta + 1)`` (SamplerER_SDE)."""

    eta: float

    def __call__(self, x: Tensor) -> Tensor:
        return x ** (self.eta + 1)


def _report(callback: Callback | None, i: int, x: Tensor, sigma: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


def _upscale_factors(steps: int, total_upscale: float, upscale_steps: int | None) -> list[float]:
    """The scale (against the input size) after each of the first upscaling steps."""
    count = max(steps // 2 + 1, 2) if upscale_steps is None else min(upscale_steps + 1, steps + 1)
    return [float(v) for v in np.linspace(1.0, total_upscale, count)[1:]]


def sample_lcm_upscale(model: Denoiser, x: Tensor, sigmas: Tensor, *, extra_args: dict[str, Any] | None = None,
                       callback: Callback | None = None, seed: int | None = None,
                       noise_sampler: NoiseSampler | None = None, total_upscale: float = 2.0,
                       upscale_method: str = "bislerp", upscale_steps: int | None = None) -> Tensor:
    """LCM steps (x <- denoised, then fresh noise of std sigma_next) that grow the latent towards
    ``total_upscale`` times its size over ``upscale_steps`` steps (default: about half of them).

    The fresh noise comes from a CPU generator seeded with ``seed`` that first skips one draw of the
    input's size (ComfyUI draws it from the global generator right after the initial noise).
    """
    extra_args = extra_args or {}
    height, width = x.shape[-2:]
    factors = _upscale_factors(len(sigmas), total_upscale, upscale_steps)
    generator = torch.Generator().manual_seed(check_seed(0 if seed is None else seed))
    torch.randn(tuple(x.shape), generator=generator)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        x = denoised
        if i < len(factors):
            x = resize(x, round(width * factors[i]), round(height * factors[i]), upscale_method)
        if sigmas[i + 1] > 0:
            noise = torch.randn(tuple(x.shape), generator=generator).to(x)
            x = x + sigmas[i + 1] * noise
    return x


def sample_euler_cfg_pp_alternative(model: Denoiser, x: Tensor, sigmas: Tensor, *,
                                    extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                                    seed: int | None = None, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Euler CFG++, SamplerEulerCFGpp's "alternative" version: the step direction is
    ``(x - 2 * denoised + uncond_denoised) / sigma`` with an ordinary Euler step (Chung et al. 2024,
    "CFG++: Manifold-constrained Classifier Free Guidance")."""
    extra_args = extra_args or {}
    uncond: list[Tensor] = []

    def observe(step: GuidanceStep, denoised: Tensor) -> None:
        uncond[:] = [step.uncond_denoised if step.uncond_denoised is not None else step.cond_denoised]

    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, sigma * s_in, on_guidance=observe, **extra_args)
        d = to_d(x - denoised + uncond[0], sigma * s_in, denoised)
        _report(callback, i, x, sigma, denoised)
        x = x + d * (sigmas[i + 1] - sigma)
    return x


sample_euler_cfg_pp_alternative.needs_uncond = True  # type: ignore[attr-defined]

#: Sampler name -> function, for names only sampler-parameter nodes use.
NODE_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "lcm_upscale": sample_lcm_upscale,
    "euler_cfg_pp_alternative": sample_euler_cfg_pp_alternative,
}
