"""DPM-Solver (fast / adaptive) in t = -log(sigma): the solver, its PID step-size controller, and
ComfyUI's dpm_fast / dpm_adaptive samplers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import Callback, Denoiser, _noise_sampler, _sigma_fn, _t_fn, get_ancestral_step


class PIDStepSizeController:
    """PID step-size control (Söderlind 2003, "Digital filters in adaptive time-stepping"; used for
    diffusion by Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When Generating Data with Score-Based
    Models"). The step factor is (1/err_n)^b1 (1/err_{n-1})^b2 (1/err_{n-2})^b3, passed through the
    limiter 1 + atan(f - 1); a step is accepted when the factor reaches ``accept_safety``."""

    def __init__(
        self,
        h: Tensor | float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float = 1,
        accept_safety: float = 0.81,
        eps: float = 1e-8,
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error: Tensor | float) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


class DPMSolver:
    """DPM-Solver-1/2/3 single steps on the noise-prediction ODE in t = -log(sigma) = lambda
    (Lu et al. 2022, "DPM-Solver", Algorithms 1 and 2 written for alpha = 1), plus the fixed-NFE
    ("fast") and adaptive step-size drivers of that paper (Sec. 3.3, Algorithms 3-5)."""

    def __init__(
        self,
        model: Denoiser,
        extra_args: dict[str, Any] | None = None,
        info_callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.info_callback = info_callback

    @staticmethod
    def t(sigma: Tensor) -> Tensor:
        return _t_fn(sigma)

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        return _sigma_fn(t)

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        """The model's noise prediction (x - denoised) / sigma at time t, memoised in ``cache``."""
        if key not in cache:
            sigma = self.sigma(t)
            cache[key] = (x - self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)) / sigma
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps

    def step_2(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 2) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(
        self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 3, r2: float = 2 / 3
    ) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def _noise_step(self, t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor | float]:
        """For eta > 0: the deterministic target time and the std of the noise added after the step."""
        if not eta:
            return t_next, 0.0
        sd, _ = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_next_ = torch.minimum(t_end, self.t(sd))
        return t_next_, (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5

    def fast(
        self,
        x: Tensor,
        t_start: Tensor,
        t_end: Tensor,
        nfe: int,
        eta: float = 0.0,
        s_noise: float = 1.0,
        noise_sampler: NoiseSampler | None = None,
    ) -> Tensor:
        """``nfe`` model evaluations in floor(nfe / 3) + 1 uniform steps in t: third-order steps, the
        last one or two of lower order so the evaluations add up (Lu et al. 2022, Sec. 3.3)."""
        if not t_end > t_start and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            cache: dict[str, Tensor] = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self._noise_step(t, t_next, t_end, eta)
            eps = self.eps(cache, "eps", x, t)
            if self.info_callback is not None:
                self.info_callback({"x": x, "i": i, "t": t, "t_up": t, "denoised": x - self.sigma(t) * eps})
            step = {1: self.step_1, 2: self.step_2, 3: self.step_3}[order]
            x = step(x, t, t_next_, cache)
            if eta and noise_sampler is not None:
                x = x + su * s_noise * noise_sampler(self.sigma(t), self.sigma(t_next))
        return x

    def adaptive(
        self,
        x: Tensor,
        t_start: Tensor,
        t_end: Tensor,
        *,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        dcoeff: float = 0.0,
        accept_safety: float = 0.81,
        eta: float = 0.0,
        s_noise: float = 1.0,
        noise_sampler: NoiseSampler | None = None,
    ) -> tuple[Tensor, dict[str, int]]:
        """Adaptive step size: a step of order ``order`` and one of order - 1 share evaluations; their
        difference, measured against atol + rtol |x|, drives the PID controller (Lu et al. 2022, Sec. 3.3)."""
        if order not in {2, 3}:
            raise ValueError(f"order must be 2 or 3, got {order}")
        forward = bool(t_end > t_start)
        if not forward and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        h_init = abs(h_init) * (1 if forward else -1)
        atol_t = torch.tensor(atol)
        rtol_t = torch.tensor(rtol)
        s = t_start
        x_prev = x
        pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
        info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
            cache: dict[str, Tensor] = {}
            t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
            t_, su = self._noise_step(s, t, t_end, eta)
            eps = self.eps(cache, "eps", x, s)
            denoised = x - self.sigma(s) * eps
            if order == 2:
                x_low = self.step_1(x, s, t_, cache)
                x_high = self.step_2(x, s, t_, cache)
            else:
                x_low = self.step_2(x, s, t_, cache, r1=1 / 3)
                x_high = self.step_3(x, s, t_, cache)
            delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high
                if eta and noise_sampler is not None:
                    x = x + su * s_noise * noise_sampler(self.sigma(s), self.sigma(t))
                s = t
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["nfe"] += order
            info["steps"] += 1
            if self.info_callback is not None:
                self.info_callback(
                    {"x": x, "i": info["steps"] - 1, "t": s, "t_up": s, "denoised": denoised, "error": error, **info}
                )
        return x, info


def _dpm_solver(model: Denoiser, extra_args: dict[str, Any] | None, callback: Callback | None) -> DPMSolver:
    solver = DPMSolver(model, extra_args)
    if callback is not None:

        def info_callback(info: dict[str, Any]) -> None:
            callback({"sigma": solver.sigma(info["t"]), "sigma_hat": solver.sigma(info["t_up"]), **info})

        solver.info_callback = info_callback
    return solver


def _dpm_range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """ComfyUI's (sigma_min, sigma_max) for dpm_fast / dpm_adaptive: the last nonzero sigma and the first."""
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    return sigma_min, sigmas[0]


@torch.no_grad()
def dpm_solver_fast(
    model: Denoiser,
    x: Tensor,
    sigma_min: Tensor | float,
    sigma_max: Tensor | float,
    n: int,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver-fast from ``sigma_max`` to ``sigma_min`` (> 0) with ``n`` model evaluations."""
    sigma_min, sigma_max = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    solver = _dpm_solver(model, extra_args, callback)
    noise_sampler = _noise_sampler(x, seed, noise_sampler) if eta else None
    return solver.fast(x, _t_fn(sigma_max), _t_fn(sigma_min), n, eta, s_noise, noise_sampler)


def _run_adaptive(
    model: Denoiser,
    x: Tensor,
    sigma_min: Tensor | float,
    sigma_max: Tensor | float,
    extra_args: dict[str, Any] | None,
    callback: Callback | None,
    noise_sampler: NoiseSampler | None,
    seed: int | None,
    options: dict[str, Any],
) -> tuple[Tensor, dict[str, int]]:
    sigma_min, sigma_max = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    solver = _dpm_solver(model, extra_args, callback)
    if options.get("eta"):
        noise_sampler = _noise_sampler(x, seed, noise_sampler)
    return solver.adaptive(x, _t_fn(sigma_max), _t_fn(sigma_min), noise_sampler=noise_sampler, **options)


@torch.no_grad()
def dpm_solver_adaptive(
    model: Denoiser,
    x: Tensor,
    sigma_min: Tensor | float,
    sigma_max: Tensor | float,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
    **options: Any,
) -> tuple[Tensor, dict[str, int]]:
    """Adaptive DPM-Solver from ``sigma_max`` to ``sigma_min`` (> 0); ``options`` as
    :meth:`DPMSolver.adaptive`. Returns the sample and step statistics (steps, nfe, n_accept, n_reject)."""
    return _run_adaptive(model, x, sigma_min, sigma_max, extra_args, callback, noise_sampler, seed, options)


@torch.no_grad()
def sample_dpm_fast(model: Denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """ComfyUI's dpm_fast: :func:`dpm_solver_fast` from sigmas[0] to the last nonzero sigma with
    len(sigmas) - 1 evaluations. It stops at that sigma: the result keeps its small residual noise."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _dpm_range(sigmas)
    return dpm_solver_fast(model, x, sigma_min, sigma_max, len(sigmas) - 1, **kwargs)


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
    **options: Any,
) -> Tensor:
    """ComfyUI's dpm_adaptive: :func:`dpm_solver_adaptive` from sigmas[0] to the last nonzero sigma
    (only the two ends of the schedule matter)."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _dpm_range(sigmas)
    x, _ = _run_adaptive(model, x, sigma_min, sigma_max, extra_args, callback, noise_sampler, seed, options)
    return x
