"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
Models"): a stochastic Adams predictor (order 3) and corrector (order 4) in data prediction, lambda =
-log sigma; sa_solver_pece re-evaluates the model on the corrected state (PECE). The noise strength
tau is 1 for sigmas between the model's 20% and 80% points of the diffusion and 0 outside (an ODE
there), as ComfyUI's default; the noise is the seeded per-step noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import Callback, Denoiser, _noise_sampler, _report, _t_fn

TauFunc = Callable[[Tensor], float]


def exponential_coefficients(s: float, t: float, order: int, tau: float) -> Tensor:
    """``int_s^t e^((1 + tau^2)(u - t)) u^p du * (1 + tau^2)`` for p = 0 .. order - 1 (float64), by
    repeated integration by parts."""
    k = 1.0 + tau**2
    h = t - s
    out = []
    for p in range(order):
        # I_p = (t^p - s^p e^(-k h)) - (p / k) I_(p-1), unrolled
        total = 0.0
        for q in range(p, -1, -1):
            factor = math.factorial(p) / math.factorial(q) * (-1.0 / k) ** (p - q)
            total += factor * (t**q - s**q * math.exp(-k * h))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def adams_coefficients(lambdas: list[float], lambda_s: float, lambda_t: float, tau: float) -> Tensor:
    """The SA-Solver b coefficients (paper eqs. 15 / 18): integrals of the Lagrange basis polynomials on
    ``lambdas`` against the exponential weight over [lambda_s, lambda_t] (times alpha_t = 1)."""
    order = len(lambdas)
    vander_t = torch.vander(torch.tensor(lambdas, dtype=torch.float64), order, increasing=True).T
    return torch.linalg.solve(vander_t, exponential_coefficients(lambda_s, lambda_t, order, tau))


@lru_cache(maxsize=1)
def _default_interval() -> tuple[float, float]:
    sampling = ModelSampling.from_betas()
    return sampling.percent_to_sigma(0.2), sampling.percent_to_sigma(0.8)


def tau_interval(model_sampling: ModelSampling | None = None, eta: float = 1.0) -> TauFunc:
    """tau = ``eta`` for sigmas between ``percent_to_sigma(0.8)`` and ``percent_to_sigma(0.2)``, else 0.

    Without ``model_sampling`` the interval of SD's scaled-linear schedule (SD1 / SD2 / SDXL) is used.
    """
    if model_sampling is None:
        start, end = _default_interval()
    else:
        start, end = model_sampling.percent_to_sigma(0.2), model_sampling.percent_to_sigma(0.8)

    def tau(sigma: Tensor) -> float:
        return eta if eta > 0 and start >= float(sigma) >= end else 0.0

    return tau


def _combine(preds: list[Tensor], coefficients: Tensor) -> Tensor:
    out = preds[0] * float(coefficients[0])
    for pred, c in zip(preds[1:], coefficients[1:], strict=True):
        out = out + pred * float(c)
    return out


@torch.no_grad()
def sample_sa_solver(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    tau_func: TauFunc | None = None,
    model_sampling: ModelSampling | None = None,
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """SA-Solver predictor-corrector; orders drop near the end when the schedule ends at 0."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    draw = _noise_sampler(x, seed, noise_sampler)
    tau_func = tau_interval(model_sampling) if tau_func is None else tau_func
    s_in = x.new_ones([x.shape[0]])
    lambdas = [float(v) for v in _t_fn(sigmas.double())]
    n = len(sigmas)
    lower_to_end = float(sigmas[-1]) == 0
    x_pred = x
    h, tau, noise = 0.0, 0.0, None
    preds: list[Tensor] = []
    for i in range(n - 1):
        denoised = model(x_pred, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x_pred, sigmas[i], sigmas[i], denoised)
        preds = [*preds, denoised][-max(predictor_order, corrector_order):]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if lower_to_end:
            p_order, c_order = min(p_order, n - 2 - i), min(c_order, n - 1 - i)
        if c_order == 0:
            x = x_pred
        else:
            b = adams_coefficients(lambdas[i - c_order + 1 : i + 1], lambdas[i - 1], lambdas[i], tau)
            x = sigmas[i] / sigmas[i - 1] * math.exp(-(tau**2) * h) * x + _combine(preds[-c_order:], b)
            if noise is not None:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in, **extra_args)
                preds[-1] = denoised
        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau = tau_func(sigmas[i + 1])
        b = adams_coefficients(lambdas[i - p_order + 1 : i + 1], lambdas[i], lambdas[i + 1], tau)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * math.exp(-(tau**2) * h) * x + _combine(preds[-p_order:], b)
        noise = None
        if tau > 0 and s_noise > 0:
            std = sigmas[i + 1] * math.sqrt(-math.expm1(-2 * tau**2 * h)) * s_noise
            noise = draw(sigmas[i], sigmas[i + 1]) * std
            x_pred = x_pred + noise
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(model: Denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """:func:`sample_sa_solver` in PECE mode (predict, evaluate, correct, evaluate)."""
    return sample_sa_solver(model, x, sigmas, use_pece=True, **kwargs)
