"""er_sde: the Extended Reverse-Time SDE solver (Cui et al. 2023, "Elucidating the Solution Space of
Extended Reverse-Time SDE for Diffusion Models", VP ER-SDE-Solver-3), with seeded per-step noise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import Callback, Denoiser, _noise_sampler, _report

_INTEGRATION_POINTS = 200


def default_noise_scaler(lam: Tensor) -> Tensor:
    """The paper's default noise scale function ``lambda (e^(lambda^0.3) + 10)``."""
    return lam * ((lam**0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    s_noise: float = 1.0,
    noise_scaler: Callable[[Tensor], Tensor] | None = None,
    max_stage: int = 3,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """ER-SDE-Solver up to stage ``max_stage`` in lambda = sigma / alpha (= sigma here). With
    r = f(lambda_t) / f(lambda_s) for the noise scaler f: stage 1 ``x = r x + (1 - r) D``; stages 2 and 3
    add the first and second divided differences of D, weighted by integrals of 1 / f taken with 200
    points; noise of std ``sqrt(lambda_t^2 - lambda_s^2 r^2)``."""
    extra_args = {} if extra_args is None else extra_args
    scaler = default_noise_scaler if noise_scaler is None else noise_scaler
    draw = _noise_sampler(x, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    points = torch.arange(0, _INTEGRATION_POINTS, dtype=torch.float32, device=x.device)
    lambdas = sigmas
    old_denoised: Tensor | None = None
    old_denoised_d: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
            old_denoised = denoised
            continue
        lam_s, lam_t = lambdas[i], lambdas[i + 1]
        r = scaler(lam_t) / scaler(lam_s)
        x = r * x + (1 - r) * denoised
        if stage >= 2 and old_denoised is not None:
            dt = lam_t - lam_s
            step = -dt / _INTEGRATION_POINTS
            positions = lam_t + points * step
            scaled = scaler(positions)
            s = torch.sum(1 / scaled) * step
            denoised_d = (denoised - old_denoised) / (lam_s - lambdas[i - 1])
            x = x + (dt + s * scaler(lam_t)) * denoised_d
            if stage >= 3 and old_denoised_d is not None:
                s_u = torch.sum((positions - lam_s) / scaled) * step
                denoised_u = (denoised_d - old_denoised_d) / ((lam_s - lambdas[i - 2]) / 2)
                x = x + ((dt**2) / 2 + s_u * scaler(lam_t)) * denoised_u
            old_denoised_d = denoised_d
        if s_noise > 0:
            std = (lam_t**2 - lam_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
            x = x + draw(sigmas[i], sigmas[i + 1]) * s_noise * std
        old_denoised = denoised
    return x
