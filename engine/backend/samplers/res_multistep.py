"""RES multistep samplers: res_multistep, res_multistep_cfg_pp, res_multistep_ancestral and
res_multistep_ancestral_cfg_pp.

The second-order multistep exponential integrator of Zhang et al. 2023 ("Improved Order Analysis and
Design of Exponential Integrator for Diffusion Models Sampling", RES): in t = -log sigma with step h,
``x_next = e^-h x + h (b1 D_i + b2 D_(i-1))``, ``b1 = phi1(-h) - phi2(-h) / c2``, ``b2 = phi2(-h) / c2``,
where c2 places the previous evaluation relative to this step; Euler on the first and last steps.
The ancestral forms step to sigma_down and add seeded noise of std sigma_up (eta = 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import (
    Callback,
    Denoiser,
    UncondTracker,
    _noise_sampler,
    _report,
    _t_fn,
    get_ancestral_step,
    to_d,
)


def _phi1(t: Tensor) -> Tensor:
    return torch.expm1(t) / t


def _phi2(t: Tensor) -> Tensor:
    return (_phi1(t) - 1.0) / t


@torch.no_grad()
def res_multistep(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    cfg_pp: bool = False,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """The RES multistep step shared by the four samplers (``eta`` 0: deterministic; ``cfg_pp``: CFG++)."""
    tracker = UncondTracker()
    extra = tracker.extra_args(extra_args) if cfg_pp else ({} if extra_args is None else extra_args)
    draw = _noise_sampler(x, seed, noise_sampler) if eta > 0 else None
    s_in = x.new_ones([x.shape[0]])
    old_denoised: Tensor | None = None
    old_sigma_down: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        uncond = tracker.latest(denoised) if cfg_pp else denoised
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0 or old_denoised is None or old_sigma_down is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            h = t_next - t
            c2 = (_t_fn(sigmas[i - 1]) - _t_fn(old_sigma_down)) / h
            phi1, phi2 = _phi1(-h), _phi2(-h)
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
            x = torch.exp(-h) * x + h * (b1 * uncond + b2 * old_denoised)
        if draw is not None and sigmas[i + 1] > 0:
            x = x + draw(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond
        old_sigma_down = sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, s_noise: float = 1.0, **kwargs: Any
) -> Tensor:
    """RES multistep, deterministic (eta 0)."""
    return res_multistep(model, x, sigmas, eta=0.0, s_noise=s_noise, cfg_pp=False, **kwargs)


@torch.no_grad()
def sample_res_multistep_cfg_pp(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, s_noise: float = 1.0, **kwargs: Any
) -> Tensor:
    """RES multistep with CFG++, deterministic (eta 0)."""
    return res_multistep(model, x, sigmas, eta=0.0, s_noise=s_noise, cfg_pp=True, **kwargs)


@torch.no_grad()
def sample_res_multistep_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0, **kwargs: Any
) -> Tensor:
    """RES multistep with ancestral noise (seeded per-step noise, eta 1 by default)."""
    return res_multistep(model, x, sigmas, eta=eta, s_noise=s_noise, cfg_pp=False, **kwargs)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0, **kwargs: Any
) -> Tensor:
    """RES multistep with ancestral noise and CFG++."""
    return res_multistep(model, x, sigmas, eta=eta, s_noise=s_noise, cfg_pp=True, **kwargs)
