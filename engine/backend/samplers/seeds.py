"""SEEDS-2 and SEEDS-3: Stochastic Explicit Exponential Derivative-free Solvers (Gonzalez et al. 2023,
"SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion Models"), data
prediction in lambda = -log sigma, with seeded per-step noise. The noise of the stages is one
Brownian path: each stage decays the previous stage's noise and adds a fresh independent part."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import Callback, Denoiser, _noise_sampler, _report, _sigma_fn, _t_fn


def _h_phi_1(h: Tensor) -> Tensor:
    return torch.expm1(h)


def _h_phi_2(h: Tensor) -> Tensor:
    return (torch.expm1(h) - h) / h


class _Path:
    """The SDE noise of one step, carried across its stages (lambda fractions r_prev -> r)."""

    def __init__(self, draw: NoiseSampler, h: Tensor, eta: float) -> None:
        self.draw, self.h, self.eta = draw, h, eta
        self.noise: Tensor | None = None
        self.r = 0.0

    def advance(self, r: float, sigma_from: Tensor, sigma_to: Tensor) -> Tensor:
        segment = (self.r - r) * self.h * self.eta
        fresh = segment.mul(2).expm1().neg().sqrt() * self.draw(sigma_from, sigma_to)
        self.noise = fresh if self.noise is None else self.noise * segment.exp() + fresh
        self.r = r
        return self.noise


@torch.no_grad()
def sample_seeds_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    solver_type: str = "phi_1",
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """SEEDS-2: an exponential Euler half step to lambda_s + r h, then the full step with the mixed
    estimate ``lerp(D, D_2, 1 / (2r))`` (``phi_1``) or the phi_2 weights (``phi_2``)."""
    if solver_type not in {"phi_1", "phi_2"}:
        raise ValueError(f"solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    extra_args = {} if extra_args is None else extra_args
    draw = _noise_sampler(x, seed, noise_sampler)
    inject = eta > 0 and s_noise > 0
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        sigma_1 = _sigma_fn(torch.lerp(lam_s, lam_t, r))
        path = _Path(draw, h, eta)
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - _h_phi_1(-r * h_eta) * denoised
        if inject:
            x_2 = x_2 + path.advance(r, sigmas[i], sigma_1) * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        decay = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x
        if solver_type == "phi_1":
            x = decay - _h_phi_1(-h_eta) * torch.lerp(denoised, denoised_2, 1 / (2 * r))
        else:
            b2 = _h_phi_2(-h_eta) / r
            x = decay - ((_h_phi_1(-h_eta) - b2) * denoised + b2 * denoised_2)
        if inject:
            x = x + path.advance(1.0, sigma_1, sigmas[i + 1]) * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r_1: float = 1.0 / 3,
    r_2: float = 2.0 / 3,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """SEEDS-3: stages at lambda fractions ``r_1`` and ``r_2`` of the step, then the full step with phi_2 weights."""
    extra_args = {} if extra_args is None else extra_args
    draw = _noise_sampler(x, seed, noise_sampler)
    inject = eta > 0 and s_noise > 0
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        sigma_1 = _sigma_fn(torch.lerp(lam_s, lam_t, r_1))
        sigma_2 = _sigma_fn(torch.lerp(lam_s, lam_t, r_2))
        path = _Path(draw, h, eta)
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - _h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            x_2 = x_2 + path.advance(r_1, sigmas[i], sigma_1) * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        a3_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a3_1 = _h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            x_3 = x_3 + path.advance(r_2, sigma_1, sigma_2) * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2 * s_in, **extra_args)
        b3 = _h_phi_2(-h_eta) / r_2
        b1 = _h_phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - (b1 * denoised + b3 * denoised_3)
        if inject:
            x = x + path.advance(1.0, sigma_2, sigmas[i + 1]) * sigmas[i + 1] * s_noise
    return x
