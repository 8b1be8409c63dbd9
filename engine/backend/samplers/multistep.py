"""Linear multistep ODE samplers on the derivative d = (x - denoised) / sigma: ipndm, ipndm_v, deis,
and gradient_estimation (with its cfg++ form).

ipndm / ipndm_v / deis follow Zhou et al. 2024 ("Fast ODE-based Sampling for Diffusion Models in
Around 5 Steps", the diff-sampler solvers that ComfyUI ships); each stores the last derivatives and
steps to 0 with the plain denoised estimate (ipndm) or an Euler step (deis).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from engine.backend.samplers.common import Callback, Denoiser, UncondTracker, _report, to_d

# Adams-Bashforth weights for equal steps, newest derivative first (iPNDM, Zhang & Chen 2023).
_AB_WEIGHTS: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def _push(buffer: list[Tensor], d: Tensor, max_order: int) -> None:
    """Keep the newest ``max_order - 1`` derivatives."""
    buffer.append(d)
    del buffer[: max(0, len(buffer) - (max_order - 1))]


@torch.no_grad()
def sample_ipndm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    max_order: int = 4,
) -> Tensor:
    """Improved PNDM: Adams-Bashforth of order min(i + 1, max_order) with the fixed equal-step weights
    (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", iPNDM)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    buffer: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = (x - denoised) / sigmas[i]
        order = min(max_order, i + 1)
        if sigmas[i + 1] == 0:
            x_next = denoised
        else:
            weights = _AB_WEIGHTS[order - 1]
            slope = weights[0] * d
            for w, past in zip(weights[1:], reversed(buffer), strict=False):
                slope = slope + w * past
            x_next = x + (sigmas[i + 1] - sigmas[i]) * slope
        _push(buffer, d, max_order)
        x = x_next
    return x


def _ipndm_v_weights(h: list[float]) -> list[float]:
    """Variable-step Adams-Bashforth weights (newest first) for the steps h = [h_n, h_n-1, ...] (sigma
    differences, newest first), as diff-sampler's iPNDM-v."""
    if len(h) == 1:
        return [1.0]
    h_n, h_1 = h[0], h[1]
    base = [(2 + h_n / h_1) / 2, -(h_n / h_1) / 2]
    if len(h) == 2:
        return base
    h_2 = h[2]
    temp1 = (1 - h_n / (3 * (h_n + h_1)) * (h_n * (h_n + h_1)) / (h_1 * (h_1 + h_2))) / 2
    if len(h) == 3:
        return [base[0] + temp1, base[1] - (1 + h_1 / h_2) * temp1, temp1 * h_1 / h_2]
    h_3 = h[3]
    temp2 = ((1 - h_n / (3 * (h_n + h_1))) / 2 + (1 - h_n / (2 * (h_n + h_1))) * h_n / (6 * (h_n + h_1 + h_2))) * (
        h_n * (h_n + h_1) * (h_n + h_1 + h_2)
    ) / (h_1 * (h_1 + h_2) * (h_1 + h_2 + h_3))
    q = h_1 * (h_1 + h_2) / (h_2 * (h_2 + h_3))
    return [
        base[0] + temp1 + temp2,
        base[1] - (1 + h_1 / h_2) * temp1 - (1 + h_1 / h_2 + q) * temp2,
        temp1 * h_1 / h_2 + (h_1 / h_2 + q * (1 + h_2 / h_3)) * temp2,
        -temp2 * q * h_1 / h_2,
    ]


@torch.no_grad()
def sample_ipndm_v(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    max_order: int = 4,
) -> Tensor:
    """iPNDM-v: Adams-Bashforth-like weights computed from the actual sigma steps (diff-sampler's
    formulas, as ComfyUI). Order 2 is the exact variable-step AB2 and order 3 reduces to AB3 for equal
    steps; the order-4 weights sum to 1 but are not AB4's, kept as ComfyUI has them."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    grid = [float(s) for s in sigmas]
    buffer: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = (x - denoised) / sigmas[i]
        order = min(max_order, i + 1)
        if sigmas[i + 1] == 0:
            x_next = denoised
        else:
            steps = [grid[i + 1 - k] - grid[i - k] for k in range(order)]
            weights = _ipndm_v_weights(steps)
            slope = weights[0] * d
            for w, past in zip(weights[1:], reversed(buffer), strict=False):
                slope = slope + w * past
            x_next = x + (sigmas[i + 1] - sigmas[i]) * slope
        _push(buffer, d, max_order)
        x = x_next
    return x


def _edm_to_vp_time(sigmas: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float, float]:
    """Map EDM sigmas to the time t of the VP SDE whose schedule spans sigma 0.002..80 over t 1e-3..1,
    ``sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1``; returns (t, beta_0, beta_1)."""
    eps_s, sigma_min, sigma_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (math.log(sigma_min**2 + 1) / eps_s - math.log(sigma_max**2 + 1)) / (eps_s - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    t = (np.sqrt(beta_min**2 + 2 * beta_d * np.log(sigmas**2 + 1)) - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_coefficients(sigmas: Tensor, max_order: int, n: int = 10000) -> list[list[float]]:
    """DEIS (Zhang & Chen 2023) tAB coefficients: for step i of order k > 1, coefficient j integrates
    the Lagrange basis polynomial of the past VP times times the exponential-integrator weight
    ``-0.5 dlog(alpha)/dt / sqrt(alpha (1 - alpha))`` over [t_i, t_i+1], numerically with ``n``
    points as diff-sampler does. Order-1 steps (and steps to sigma 0) get an empty list (Euler)."""
    t, beta_0, beta_1 = _edm_to_vp_time(sigmas.detach().cpu().double().numpy())
    coefficients: list[list[float]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1 or float(sigmas[i + 1]) <= 0:
            coefficients.append([])
            continue
        taus = np.linspace(t[i], t[i + 1], n)
        log_alpha = -0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0
        alpha = np.exp(log_alpha)
        weight = -0.5 * (-taus * (beta_1 - beta_0) - beta_0) / np.sqrt(alpha * (1 - alpha))
        past = [t[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = np.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - past[k]) / (past[j] - past[k])
            row.append(float(np.sum(weight * basis) * (t[i + 1] - t[i]) / n))
        coefficients.append(row)
    return coefficients


@torch.no_grad()
def sample_deis(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    max_order: int = 3,
) -> Tensor:
    """DEIS tAB (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"):
    ``x_next = x + sum_j C_ij d_(i-j)`` with :func:`deis_coefficients`; Euler for the first and last step."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    coefficients = deis_coefficients(sigmas, max_order)
    buffer: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = (x - denoised) / sigmas[i]
        row = coefficients[i]
        if not row:
            x_next = x + (sigmas[i + 1] - sigmas[i]) * d
        else:
            x_next = x + row[0] * d
            for c, past in zip(row[1:], reversed(buffer), strict=False):
                x_next = x_next + c * past
        _push(buffer, d, max_order)
        x = x_next
    return x


@torch.no_grad()
def sample_gradient_estimation(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    ge_gamma: float = 2.0,
    cfg_pp: bool = False,
) -> Tensor:
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and Improving Diffusion Models from an
    Optimization Perspective"): an Euler step plus ``(ge_gamma - 1) (d - d_prev) dt`` from the second
    step on. ``cfg_pp`` takes d from the uncond prediction and steps from ``denoised`` (CFG++)."""
    tracker = UncondTracker()
    extra = tracker.extra_args(extra_args) if cfg_pp else ({} if extra_args is None else extra_args)
    s_in = x.new_ones([x.shape[0]])
    old_d: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        d = to_d(x, sigmas[i], tracker.latest(denoised) if cfg_pp else denoised)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """:func:`sample_gradient_estimation` with ``cfg_pp=True``."""
    return sample_gradient_estimation(model, x, sigmas, cfg_pp=True, **kwargs)
