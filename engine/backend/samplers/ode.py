"""Probability-flow ODE samplers: euler (and ComfyUI's ddim), heun, dpm_2, lms and dpmpp_2m.

euler, heun and dpm_2 add noise only with churn (``s_churn`` > 0, Karras et al. 2022, Algorithm 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import (
    Callback,
    Denoiser,
    _churn,
    _churn_noise,
    _report,
    _sigma_fn,
    _t_fn,
    to_d,
)


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Euler steps on the probability-flow ODE, with optional churn: Karras et al. 2022, Algorithm 2
    (second-order correction left out)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    draw = _churn_noise(x, seed, noise_sampler, s_churn)
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = _churn(x, sigmas[i], steps, s_churn, s_tmin, s_tmax, s_noise, draw)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_ddim(model: Denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """ComfyUI's "ddim": Euler steps (the deterministic DDIM update, Song et al. 2021, is Euler in
    sigma, Karras et al. 2022 Sec. 3); its inpainting uses fresh noise (see :func:`ksample`)."""
    return sample_euler(model, x, sigmas, **kwargs)


@torch.no_grad()
def sample_heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Heun's second-order method: Karras et al. 2022, Algorithm 2 (Euler on the last step to 0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    draw = _churn_noise(x, seed, noise_sampler, s_churn)
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = _churn(x, sigmas[i], steps, s_churn, s_tmin, s_tmax, s_noise, draw)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Second-order midpoint steps with the midpoint at the geometric mean of the two sigmas
    (DPM-Solver-2, Lu et al. 2022, as formulated by Karras et al. 2022 / k-diffusion)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    draw = _churn_noise(x, seed, noise_sampler, s_churn)
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = _churn(x, sigmas[i], steps, s_churn, s_tmin, s_tmax, s_noise, draw)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


# Gauss-Legendre nodes / weights on [-1, 1]; 4 points integrate polynomials up to degree 7 exactly.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)


def linear_multistep_coeff(order: int, t: Sequence[float] | npt.NDArray[np.float64], i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial through t_i, ..., t_{i-order+1}
    that is 1 at t_{i-j}: the weight of derivative i-j in an Adams-Bashforth step on a non-uniform grid."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    others = [float(t[i - k]) for k in range(order) if k != j]
    node = float(t[i - j])
    a, b = float(t[i]), float(t[i + 1])
    taus = (b - a) / 2 * _GL_NODES + (a + b) / 2
    basis = np.ones_like(taus)
    for other in others:
        basis *= (taus - other) / (node - other)
    return float((b - a) / 2 * np.dot(_GL_WEIGHTS, basis))


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth) on the ODE in sigma, up to ``order`` past derivatives
    (Karras et al. 2022 / k-diffusion's LMS; the PLMS idea of Liu et al. 2022 on a non-uniform grid).
    The final step to sigma 0 returns the denoised estimate."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    grid = sigmas.detach().cpu().float().numpy().astype(np.float64)
    derivatives: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        derivatives.append(to_d(x, sigmas[i], denoised))
        if len(derivatives) > order:
            derivatives.pop(0)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised  # the step to sigma 0 lands on the denoised estimate (as ComfyUI)
            continue
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, grid, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(derivatives), strict=False))
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M): Lu et al. 2022, "DPM-Solver++", Algorithm 2 (first order on the first step
    and on the last step to sigma 0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_heunpp2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Heun++ (ComfyUI's heunpp2, after sd-webui-samplers-scheduler): an Euler predictor over the next
    two sigmas and a slope mixing the three derivatives with weights sigma_{i+1} / (3 sigma_0) and
    sigma_{i+2} / (3 sigma_0); Heun with weight sigma_{i+1} / (2 sigma_0) on the last step but one,
    Euler on the last. Optional churn as :func:`sample_heun`."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    draw = _churn_noise(x, seed, noise_sampler, s_churn)
    steps = len(sigmas) - 1
    s_end = sigmas[-1]
    for i in range(steps):
        x, sigma_hat = _churn(x, sigmas[i], steps, s_churn, s_tmin, s_tmax, s_noise, draw)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        if sigmas[i + 2] == s_end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
        d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))
        w2 = sigmas[i + 1] / (3 * sigmas[0])
        w3 = sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x
