"""Sigma schedules, with ComfyUI's names and semantics.

The *schedule* (:func:`calculate_sigmas`, :func:`sigmas_for`): a decreasing 1-D float32 tensor of
sigmas, usually ending in 0, derived from a model's
:class:`~engine.backend.model_sampling.ModelSampling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from engine.backend.model_sampling import ModelSampling


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. (5): ``(max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho``, then 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n sigmas evenly spaced in log sigma from sigma_max to sigma_min, then 0."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """log sigma a polynomial of degree ``rho`` in the step: ``exp(r^rho (log max - log min) + log min)``
    with r running linearly from 1 to 0 over n values, then 0 (k-diffusion's polyexponential)."""
    ramp = torch.linspace(1, 0, n) ** rho
    log_min = math.log(sigma_min)
    return append_zero((ramp * (math.log(sigma_max) - log_min) + log_min).exp())


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> Tensor:
    """The continuous VP-SDE noise levels (Song et al. 2021): ``sigma(t) = sqrt(exp(beta_d t^2 / 2 +
    beta_min t) - 1)`` for t from 1 down to ``eps_s`` in n steps, then 0."""
    t = torch.linspace(1, eps_s, n)
    return append_zero(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t).sqrt())


def get_sigmas_laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> Tensor:
    """Tiankai et al. 2024's Laplace schedule: log sigma at the Laplace(mu, beta) quantiles of n evenly
    spaced points of [0, 1] (1e-5 keeps the ends finite), clamped to [sigma_min, sigma_max].

    As in ComfyUI, no 0 is appended: the n sigmas end at (about) sigma_min.
    """
    x = torch.linspace(0, 1, n)
    log_sigma = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return log_sigma.exp().clamp(min=sigma_min, max=sigma_max)


def sd_turbo_sigmas(model_sampling: ModelSampling, steps: int, denoise: float = 1.0) -> Tensor:
    """SD-Turbo's schedule: the sigmas of timesteps 999, 899, ..., 99 (ten, one per 100), starting
    ``10 - int(10 * denoise)`` entries in, ``steps`` of them, then 0 (ComfyUI's SDTurboScheduler)."""
    start = 10 - int(10 * denoise)
    timesteps = (torch.arange(1, 11) * 100 - 1).flip(0)[start:start + steps]
    return append_zero(model_sampling.sigma(timesteps).float().cpu())


def basic_scheduler(model_sampling: ModelSampling, scheduler: str, steps: int, denoise: float = 1.0) -> Tensor:
    """ComfyUI's BasicScheduler: the named schedule for int(steps / denoise) steps, last steps + 1 kept;
    empty when denoise <= 0."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0, dtype=torch.float32)
        total = int(steps / denoise)
    return calculate_sigmas(model_sampling, scheduler, total).cpu()[-(steps + 1):]


def normal_scheduler(model_sampling: ModelSampling, steps: int, sgm: bool = False) -> Tensor:
    """Timesteps evenly spaced from timestep(sigma_max) to timestep(sigma_min), mapped to sigma.

    ``sgm`` (sgm_uniform) spaces steps + 1 points and drops the last, as Stability's sgm code does.
    A 0 is appended unless the last sigma already is ~0 (zero-terminal-SNR models).
    """
    ms = model_sampling
    start = float(ms.timestep(ms.sigma_max))
    end = float(ms.timestep(ms.sigma_min))
    add_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(torch.tensor(end))), 0, abs_tol=0.00001):
            steps += 1
            add_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = ms.sigma(timesteps).float()
    return append_zero(sigmas) if add_zero else sigmas


def simple_scheduler(model_sampling: ModelSampling, steps: int) -> Tensor:
    """Every (T/steps)-th discrete sigma counting down from sigma_max, then 0."""
    sigmas = model_sampling.sigmas
    stride = len(sigmas) / steps
    picked = [float(sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def ddim_uniform_scheduler(model_sampling: ModelSampling, steps: int) -> Tensor:
    """Discrete sigmas 1, 1 + k, 1 + 2k, ... (k = T // steps), reversed, then 0 (DDIM's "uniform").

    As in ComfyUI this yields ceil((T - 1) / k) + 1 values, which is steps + 2 when T - 1 is not a
    multiple of k (e.g. 7 steps -> 9 sigmas).
    """
    sigmas = model_sampling.sigmas
    picked: list[float] = []
    if math.isclose(float(sigmas[1]), 0, abs_tol=0.00001):
        steps += 1
    else:
        picked = [0.0]
    stride = max(len(sigmas) // steps, 1)
    picked += [float(s) for s in sigmas[1::stride]]
    return torch.tensor(picked[::-1], dtype=torch.float32)


def beta_scheduler(model_sampling: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Timesteps at the Beta(alpha, beta) quantiles of 1 - i/steps, rounded and deduplicated, then 0.

    Lee et al. 2024, "Beta Sampling is All You Need". Needs scipy (``scipy.stats.beta.ppf``).
    """
    from scipy import stats  # optional dependency, only this scheduler needs it

    sigmas = model_sampling.sigmas
    total_timesteps = len(sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    timesteps = np.rint(stats.beta.ppf(quantiles, alpha, beta) * total_timesteps)
    picked: list[float] = []
    last = -1.0
    for t in timesteps:
        if t != last:
            picked.append(float(sigmas[int(t)]))
        last = t
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def linear_quadratic_scheduler(
    model_sampling: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """Genmo's Mochi schedule in units of sigma_max: noise fraction 1 - f(i) where f rises linearly to
    ``threshold_noise`` over the first ``linear_steps`` (steps // 2) and then follows the quadratic
    that continues it with matching value and slope and reaches 1 at i = steps."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        lin = steps // 2 if linear_steps is None else linear_steps
        quad = steps - lin
        diff = lin - threshold_noise * steps
        quad_coef = diff / (lin * quad**2)
        lin_coef = threshold_noise / lin - 2 * diff / quad**2
        const = quad_coef * lin**2
        rising = [i * threshold_noise / lin for i in range(lin)]
        rising += [quad_coef * i**2 + lin_coef * i + const for i in range(lin, steps)]
        schedule = [1.0 - f for f in [*rising, 1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * model_sampling.sigma_max.cpu()


def kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``tan((1 - u) atan(sigma_max) + u atan(sigma_min))`` for u = i / (n - 1), then 0.

    The KL-optimal schedule of Sabour et al. 2024, "Align Your Steps", Sec. 3 / Theorem 3.1.
    (n = 1 gives [sigma_max, 0]; ComfyUI divides by zero there.)
    """
    u = torch.arange(n, dtype=torch.float32).div_(max(n - 1, 1))
    sigmas = torch.zeros(n + 1, dtype=torch.float32)
    sigmas[:-1] = (u * math.atan(sigma_min) + (1 - u) * math.atan(sigma_max)).tan_()
    return sigmas


def _karras(ms: ModelSampling, steps: int) -> Tensor:
    return get_sigmas_karras(steps, float(ms.sigma_min), float(ms.sigma_max))


def _exponential(ms: ModelSampling, steps: int) -> Tensor:
    return get_sigmas_exponential(steps, float(ms.sigma_min), float(ms.sigma_max))


def _sgm_uniform(ms: ModelSampling, steps: int) -> Tensor:
    return normal_scheduler(ms, steps, sgm=True)


def _kl_optimal(ms: ModelSampling, steps: int) -> Tensor:
    return kl_optimal_scheduler(steps, float(ms.sigma_min), float(ms.sigma_max))


#: ComfyUI's scheduler names, in its combo order.
SCHEDULERS: dict[str, Callable[[ModelSampling, int], Tensor]] = {
    "simple": simple_scheduler,
    "sgm_uniform": _sgm_uniform,
    "karras": _karras,
    "exponential": _exponential,
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": _kl_optimal,
}
SCHEDULER_NAMES: list[str] = list(SCHEDULERS)

#: Samplers that get steps + 1 sigmas with the penultimate one dropped.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def calculate_sigmas(model_sampling: ModelSampling, scheduler_name: str, steps: int) -> Tensor:
    """The float32 CPU schedule of ``scheduler_name`` for ``steps`` steps (normally steps + 1 values)."""
    try:
        scheduler = SCHEDULERS[scheduler_name]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler_name!r}; choose one of {', '.join(SCHEDULER_NAMES)}") from None
    return scheduler(model_sampling, steps)


def _sampler_sigmas(model_sampling: ModelSampling, scheduler: str, sampler: str, steps: int) -> Tensor:
    if sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = calculate_sigmas(model_sampling, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return calculate_sigmas(model_sampling, scheduler, steps)


def sigmas_for(
    model_sampling: ModelSampling,
    scheduler: str,
    sampler: str,
    steps: int,
    *,
    denoise: float = 1.0,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> Tensor:
    """The sigmas a ComfyUI KSampler / KSamplerAdvanced run samples over.

    * ``denoise`` < 1 (img2img): the schedule for int(steps / denoise) steps, last steps + 1 kept;
      ``denoise`` <= 0 gives no sigmas.
    * ``last_step`` (end_at_step) keeps sigmas[:last_step + 1]; ``force_full_denoise``
      (return_with_leftover_noise = disable) then sets the last one to 0.
    * ``start_step`` (start_at_step) drops the first start_step sigmas; no sigmas when it leaves
      fewer than two.

    An empty result means "return the input latent unchanged" (see :func:`ksample`).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if denoise > 0.9999:
        sigmas = _sampler_sigmas(model_sampling, scheduler, sampler, steps)
    elif denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    else:
        sigmas = _sampler_sigmas(model_sampling, scheduler, sampler, int(steps / denoise))[-(steps + 1) :]
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return torch.zeros(0, dtype=torch.float32)
        sigmas = sigmas[start_step:]
    return sigmas
