"""Ancestral samplers: a deterministic step to sigma_down, then fresh seeded noise of std sigma_up
(euler_ancestral, dpm_2_ancestral, dpmpp_2s_ancestral), and lcm, which steps all the way to the
denoised estimate and re-noises it to the next sigma."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import (
    Callback,
    Denoiser,
    _noise_sampler,
    _report,
    _sigma_fn,
    _t_fn,
    get_ancestral_step,
    to_d,
)


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Ancestral sampling with Euler steps: Euler to sigma_down, then noise of std sigma_up
    (k-diffusion's euler_a; DDPM ancestral sampling, Ho et al. 2020, in sigma form)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _noise_sampler(x, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 steps to sigma_down (see :func:`sample_dpm_2`)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _noise_sampler(x, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps to sigma_down (Lu et al. 2022, "DPM-Solver++",
    Algorithm 1 with r = 1/2)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _noise_sampler(x, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * s_in, **extra_args)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, "Latent Consistency Models",
    Algorithm 1): jump to the denoised estimate, re-noise it to the next sigma with fresh noise."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _noise_sampler(x, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
    return x


@torch.no_grad()
def sample_ddpm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on the sigmas: in VP form
    ``x_vp = x / sqrt(1 + sigma^2)``, alpha_bar = 1 / (1 + sigma^2), the posterior mean
    ``(x_vp - (1 - a) eps / sqrt(1 - alpha_bar)) / sqrt(a)`` with a = alpha_bar / alpha_bar_next, plus
    noise of the posterior variance ``(1 - a)(1 - alpha_bar_next) / (1 - alpha_bar)``."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _noise_sampler(x, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        eps = (x - denoised) / sigma
        alpha_bar = 1 / (sigma * sigma + 1)
        alpha_bar_next = 1 / (sigma_next * sigma_next + 1)
        a = alpha_bar / alpha_bar_next
        x = (1.0 / a).sqrt() * (x / (1.0 + sigma**2).sqrt() - (1 - a) * eps / (1 - alpha_bar).sqrt())
        if sigma_next > 0:
            var = (1 - a) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar)
            x = x + var.sqrt() * noise_sampler(sigma, sigma_next)
            x = x * (1.0 + sigma_next**2).sqrt()
    return x
