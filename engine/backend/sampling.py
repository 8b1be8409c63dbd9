"""Sigma schedules and k-diffusion-style samplers, with ComfyUI's names and semantics.

Three parts that meet only through tensors (the split of Karras et al. 2022):

* the *model sampling* (:class:`ModelSampling`): the discrete noise levels of an SD model and the
  eps / v-prediction scalings;
* the *schedule* (:func:`calculate_sigmas`, :func:`sigmas_for`): a decreasing 1-D float32 tensor of
  sigmas, usually ending in 0;
* the *sampler* (``sample_<name>``): a pure function ``(model, x, sigmas, ...) -> x`` where
  ``model(x, sigma, **extra_args)`` returns the denoised estimate for a [B] tensor of sigmas.

Every sampler calls ``callback`` with a dict ``{"i", "x", "sigma", "sigma_hat", "denoised"}`` once per
step (dpm_fast: once per internal solver step, fewer than the sigmas; dpm_adaptive: once per attempted
step); raising from the callback interrupts the run. Noise for the stochastic samplers comes from
:mod:`engine.backend.noise` and, by default, does not depend on the device. The high-level
:func:`ksample` strings these together as ComfyUI's KSampler does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from engine.backend import noise as noise_mod
from engine.backend.guidance import InpaintDenoiser
from engine.backend.noise import BrownianTreeNoiseSampler, NoiseSampler, SeededNoiseSampler

Denoiser = Callable[..., Tensor]
Callback = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------------------
# Model sampling: the discrete-time noise levels of an SD model and its parameterization
# --------------------------------------------------------------------------------------------------


class Prediction(StrEnum):
    EPS = "eps"
    V_PREDICTION = "v_prediction"


def _expand(sigma: Tensor | float, like: Tensor) -> Tensor:
    """``sigma`` (scalar or [B]) reshaped to broadcast against ``like``."""
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1))


def rescale_zero_terminal_snr_sigmas(sigmas: Tensor) -> Tensor:
    """Rescale a schedule to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Algorithm 1).

    sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first is unchanged. The last
    alpha_bar is then set to 4.8973451890853435e-08 (as ComfyUI does) so the last sigma stays finite.
    """
    alphas_bar_sqrt = (1.0 / (sigmas * sigmas + 1.0)).sqrt()
    first = alphas_bar_sqrt[0].clone()
    last = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


class ModelSampling:
    """Noise levels and scalings of a discrete-time (DDPM-trained) SD model, k-diffusion style.

    The DDPM forward process (Ho et al. 2020) ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` is rewritten in
    variance-exploding form ``x = x0 + sigma eps`` with ``sigma_t = sqrt((1 - a_t) / a_t)`` (Karras et
    al. 2022, Sec. 2 and Table 1). ``sigmas[t]`` for t = 0..999 ascends from ``sigma_min`` to ``sigma_max``.
    """

    def __init__(
        self,
        sigmas: Tensor,
        prediction: Prediction | str = Prediction.EPS,
        sigma_data: float = 1.0,
    ) -> None:
        sigmas = torch.as_tensor(sigmas)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()
        self.prediction = Prediction(prediction)
        self.sigma_data = float(sigma_data)

    @classmethod
    def from_betas(
        cls,
        prediction: Prediction | str = Prediction.EPS,
        *,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        timesteps: int = 1000,
        zsnr: bool = False,
    ) -> ModelSampling:
        """SD's "scaled linear" schedule: ``betas = linspace(sqrt(start), sqrt(end), T, float64) ** 2``."""
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        return cls(sigmas, prediction)

    def to(self, device: torch.device | str) -> ModelSampling:
        """A copy whose sigma tables live on ``device``."""
        moved = ModelSampling.__new__(ModelSampling)
        moved.sigmas = self.sigmas.to(device)
        moved.log_sigmas = self.log_sigmas.to(device)
        moved.prediction = self.prediction
        moved.sigma_data = self.sigma_data
        return moved

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    @property
    def sigma_min(self) -> Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: Tensor) -> Tensor:
        """The index of the nearest discrete sigma in log space, as a float tensor of ``sigma``'s shape."""
        sigma = torch.as_tensor(sigma)
        log_sigma = sigma.log().to(self.log_sigmas.device)
        dists = log_sigma.reshape(-1) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(device=sigma.device, dtype=torch.float32)

    def sigma(self, timestep: Tensor | float) -> Tensor:
        """sigma at a (fractional) timestep: log-sigma interpolated linearly between the integers."""
        timestep = torch.as_tensor(timestep)
        t = timestep.float().to(self.log_sigmas.device).clamp(0, self.num_timesteps - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """The sigma reached after ``percent`` (0..1) of the diffusion; 0 -> 999999999.9, 1 -> 0."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.num_timesteps - 1))).item())

    # Parameterization ------------------------------------------------------------------------------

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        """The network input ``x / sqrt(sigma^2 + sigma_data^2)`` (c_in of Karras et al. 2022)."""
        return x / (_expand(sigma, x) ** 2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        """The denoised estimate from the network output.

        eps: ``x - out * sigma``. v (Salimans & Ho 2022): ``x * sd^2 / (sigma^2 + sd^2) -
        out * sigma * sd / sqrt(sigma^2 + sd^2)`` with sd = sigma_data.
        """
        s = _expand(sigma, model_output)
        if self.prediction is Prediction.EPS:
            return x - model_output * s
        sd2 = self.sigma_data**2
        return x * sd2 / (s**2 + sd2) - model_output * s * self.sigma_data / (s**2 + sd2) ** 0.5

    def noise_scaling(self, sigma: Tensor | float, noise: Tensor, latent: Tensor, max_denoise: bool = False) -> Tensor:
        """The starting point: ``latent + noise * (sqrt(1 + sigma^2) if max_denoise else sigma)``."""
        s = _expand(sigma, noise)
        scale = torch.sqrt(1.0 + s**2) if max_denoise else s
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor:
        """Identity for eps / v models (flow models would undo their scaling here)."""
        return latent


def is_max_denoise(model_sampling: ModelSampling, sigmas: Tensor) -> bool:
    """True when sampling starts at (or above) the model's largest sigma (full txt2img noise)."""
    sigma_max = float(model_sampling.sigma_max)
    sigma = float(sigmas[0])
    return math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------


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
#: Samplers whose inpaint re-noising uses fresh noise (seed + 1) instead of the initial noise.
RANDOM_INPAINT_NOISE_SAMPLERS = frozenset({"ddim"})


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


# --------------------------------------------------------------------------------------------------
# Sampler helpers
# --------------------------------------------------------------------------------------------------


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - denoised) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / _expand(sigma, x)


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split the step sigma_from -> sigma_to into a deterministic step to ``sigma_down`` and fresh noise
    of std ``sigma_up`` with sigma_down^2 + sigma_up^2 = sigma_to^2 (the DDPM ancestral step as a
    sigma split; ``eta`` scales the noise as DDIM's eta, Song et al. 2021)."""
    sigma_to = torch.as_tensor(sigma_to)
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _sigma_fn(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t_fn(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _report(callback: Callback | None, i: int, x: Tensor, sigma: Tensor, sigma_hat: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _noise_sampler(x: Tensor, seed: int | None, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    return noise_sampler if noise_sampler is not None else SeededNoiseSampler(x, seed)


def _brownian_sampler(x: Tensor, sigmas: Tensor, seed: int | None, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    if noise_sampler is not None:
        return noise_sampler
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)


def _churn_noise(
    x: Tensor, seed: int | None, noise_sampler: NoiseSampler | None, s_churn: float
) -> Callable[[], Tensor] | None:
    """The noise source for churn (drawn from once per churned step), or None without churn."""
    if s_churn <= 0:
        return None
    sampler = _noise_sampler(x, seed, noise_sampler)
    return lambda: sampler(None, None)


def _churn(
    x: Tensor,
    sigma: Tensor,
    steps: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise: Callable[[], Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """Karras et al. 2022, Algorithm 2, lines 4-6: raise sigma by gamma and add matching noise."""
    if s_churn <= 0 or noise is None:
        return x, sigma
    gamma = min(s_churn / steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise() * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------


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


# Gauss-Legendre nodes / weights on [-1, 1]; 4 points integrate polynomials up to degree 7 exactly.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)


def linear_multistep_coeff(order: int, t: Sequence[float], i: int, j: int) -> float:
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
def sample_dpmpp_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Stochastic DPM-Solver++ with a midpoint at fraction ``r`` of the step in log sigma (Lu et al.
    2022, "DPM-Solver++", with the SDE noise split of Karras et al. 2022; Brownian-tree noise)."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian_sampler(x, sigmas, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        sigma_s = _sigma_fn(s)
        # Step 1: to the intermediate sigma.
        sd, su = get_ancestral_step(sigmas[i], sigma_s, eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / sigmas[i]) * x - (t - s_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + noise_sampler(sigmas[i], sigma_s) * s_noise * su
        denoised_2 = model(x_2, sigma_s * s_in, **extra_args)
        # Step 2: the full step with the combined prediction.
        sd, su = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / sigmas[i]) * x - (t - t_next_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
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
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", Sec. 5 / Appendix: the data-prediction
    SDE solver), second-order ``midpoint`` or ``heun`` correction; Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian_sampler(x, sigmas, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    old_denoised: Tensor | None = None
    h_last: Tensor | None = None
    h: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t_fn(sigmas[i + 1]) - _t_fn(sigmas[i])
            h_eta = h * (eta + 1)
            phi_1 = (-h_eta).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + phi_1 * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi_1 / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi_1 * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * scale
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model: Denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """:func:`sample_dpmpp_2m_sde` with ``solver_type="heun"``."""
    return sample_dpmpp_2m_sde(model, x, sigmas, solver_type="heun", **kwargs)


@torch.no_grad()
def sample_dpmpp_3m_sde(
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
    """DPM-Solver++(3M) SDE: the third-order multistep data-prediction solver of Lu et al. 2022
    ("DPM-Solver++", Appendix; exponential integrator with phi_2 / phi_3 terms, Hochbruck & Ostermann
    2010), with the SDE noise term; Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian_sampler(x, sigmas, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    denoised_1: Tensor | None = None
    denoised_2: Tensor | None = None
    h: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t_fn(sigmas[i + 1]) - _t_fn(sigmas[i])
            h_eta = h * (eta + 1)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None and denoised_1 is not None and denoised_2 is not None and h_1 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta > 0 and s_noise > 0:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * scale
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
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


# --------------------------------------------------------------------------------------------------
# DPM-Solver (fast / adaptive) in t = -log(sigma)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# UniPC
# --------------------------------------------------------------------------------------------------


class _VPSchedule:
    """alpha, std and lambda of the variance-preserving process equivalent to sigma (alpha = 1/sqrt(1 +
    sigma^2), std = sigma alpha, lambda = log(alpha / std) = -log sigma).

    Written through log alpha = 0.5 log(1 / (sigma^2 + 1)) and std = sqrt(1 - alpha^2), the form ComfyUI
    evaluates in float32, so the rounding at tiny sigmas (the 0.001 end point) comes out the same.
    """

    @staticmethod
    def log_alpha(sigma: Tensor) -> Tensor:
        return 0.5 * torch.log(1 / (sigma * sigma + 1))

    @classmethod
    def alpha(cls, sigma: Tensor) -> Tensor:
        return torch.exp(cls.log_alpha(sigma))

    @classmethod
    def std(cls, sigma: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * cls.log_alpha(sigma)))

    @classmethod
    def lam(cls, sigma: Tensor) -> Tensor:
        log_alpha = cls.log_alpha(sigma)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


class UniPC:
    """UniPC with data prediction (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
    for Fast Sampling of Diffusion Models", Algorithms 2 and 3): UniP-p predictor and UniC-p corrector,
    B(h) = h ("bh1") or e^h - 1 ("bh2"). The state is kept in the VP convention x_vp = x / sqrt(1 + sigma^2).
    """

    def __init__(self, model: Denoiser, extra_args: dict[str, Any] | None, variant: str = "bh1") -> None:
        if variant not in {"bh1", "bh2"}:
            raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.variant = variant

    def data_prediction(self, x_vp: Tensor, sigma: Tensor) -> Tensor:
        x = x_vp * (sigma**2 + 1.0) ** 0.5
        return self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)

    def update(
        self, x: Tensor, model_prev: list[Tensor], t_prev: list[Tensor], t: Tensor, order: int, use_corrector: bool
    ) -> tuple[Tensor, Tensor | None]:
        """One multistep UniP-p step to t (and UniC-p correction when ``use_corrector``)."""
        vp = _VPSchedule
        lambda_prev_0 = vp.lam(t_prev[-1])
        h = vp.lam(t) - lambda_prev_0
        m0 = model_prev[-1]
        rks: list[Tensor | float] = []
        d1s: list[Tensor] = []
        for i in range(1, order):
            rk = (vp.lam(t_prev[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        rks_t = torch.tensor([float(r) for r in rks], dtype=torch.float32)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        factorial_i = 1
        rows: list[Tensor] = []
        b: list[float] = []
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            b.append(float(h_phi_k * factorial_i / b_h))
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        big_r = torch.stack(rows)
        b_t = torch.tensor(b, dtype=torch.float32)
        alpha_t = vp.alpha(t)
        x_t_ = (vp.std(t) / vp.std(t_prev[-1])) * x - (alpha_t * h_phi_1) * m0
        pred_res: Tensor | float = 0.0
        if d1s:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b_t[:-1])
            pred_res = sum(rho * d for rho, d in zip(rhos_p.tolist(), d1s, strict=True))
        x_t = x_t_ - (alpha_t * b_h) * pred_res
        if not use_corrector:
            return x_t, None
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(big_r, b_t)
        model_t = self.data_prediction(x_t, t)
        corr_res: Tensor | float = sum(rho * d for rho, d in zip(rhos_c[:-1].tolist(), d1s, strict=True))
        x_t = x_t_ - (alpha_t * b_h) * (corr_res + float(rhos_c[-1]) * (model_t - m0))
        return x_t, model_t


@torch.no_grad()
def _sample_unipc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None,
    callback: Callback | None,
    variant: str,
) -> Tensor:
    if len(sigmas) <= 1:
        return x
    ts = sigmas.detach().clone().float()
    if ts[-1] == 0:
        ts[-1] = 0.001  # UniPC in the VP convention needs a positive end point
    solver = UniPC(model, extra_args, variant)
    steps = len(ts) - 1
    order = min(3, steps - 1)
    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    model_prev = [solver.data_prediction(x, ts[0])]
    t_prev = [ts[0]]
    _report_unipc(callback, 0, x, ts[0], model_prev[-1])
    # ComfyUI updates only from its second loop iteration on, so one step (order 0) changes nothing.
    for step in range(1, steps + 1 if steps >= 2 else 1):
        if step < order:
            step_order, use_corrector = step, True
        else:
            step_order, use_corrector = min(order, steps + 1 - step), step < steps
        x, model_x = solver.update(x, model_prev, t_prev, ts[step], step_order, use_corrector)
        if step < order:
            model_prev.append(model_x if model_x is not None else solver.data_prediction(x, ts[step]))
            t_prev.append(ts[step])
        else:
            model_prev, t_prev = model_prev[1:] + model_prev[-1:], t_prev[1:] + [ts[step]]
            if step < steps:
                model_prev[-1] = model_x if model_x is not None else solver.data_prediction(x, ts[step])
        # ComfyUI reports `steps` times: after the first evaluation, after updates 1 .. steps - 2, and
        # after the final update (its last loop iteration runs updates steps - 1 and steps).
        if step <= steps - 2 or step == steps:
            _report_unipc(callback, min(step, steps - 1), x, ts[step], model_prev[-1])
    return x / _VPSchedule.alpha(ts[-1])


def _report_unipc(callback: Callback | None, i: int, x_vp: Tensor, sigma: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        x = x_vp / _VPSchedule.alpha(sigma)
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


@torch.no_grad()
def sample_uni_pc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """UniPC-3 multistep, B(h) = h (bh1), lower order on the last steps, as ComfyUI's uni_pc.

    A final sigma of 0 is replaced by 0.001 and the result is divided by the VP alpha there. As in
    ComfyUI, order = min(3, steps - 1), so a single step returns the (rescaled) input unchanged.
    """
    return _sample_unipc(model, x, sigmas, extra_args, callback, "bh1")


@torch.no_grad()
def sample_uni_pc_bh2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """:func:`sample_uni_pc` with B(h) = e^h - 1 (bh2), recommended by Zhao et al. for guided sampling."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, "bh2")


# --------------------------------------------------------------------------------------------------
# Registry and the KSampler run
# --------------------------------------------------------------------------------------------------


class Sampler(Protocol):
    """The uniform signature :func:`get_sampler` returns."""

    def __call__(
        self,
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        extra_args: dict[str, Any] | None = None,
        callback: Callback | None = None,
        seed: int | None = None,
        noise_sampler: NoiseSampler | None = None,
        **options: Any,
    ) -> Tensor: ...


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Tensor]
    # "none": deterministic; "seeded": SeededNoiseSampler; "brownian": Brownian tree; "churn": only with s_churn > 0
    noise: str


_SAMPLERS: dict[str, _Entry] = {
    "euler": _Entry(sample_euler, "churn"),
    "euler_ancestral": _Entry(sample_euler_ancestral, "seeded"),
    "heun": _Entry(sample_heun, "churn"),
    "dpm_2": _Entry(sample_dpm_2, "churn"),
    "dpm_2_ancestral": _Entry(sample_dpm_2_ancestral, "seeded"),
    "lms": _Entry(sample_lms, "none"),
    "dpm_fast": _Entry(sample_dpm_fast, "seeded"),
    "dpm_adaptive": _Entry(sample_dpm_adaptive, "seeded"),
    "dpmpp_2s_ancestral": _Entry(sample_dpmpp_2s_ancestral, "seeded"),
    "dpmpp_sde": _Entry(sample_dpmpp_sde, "brownian"),
    "dpmpp_2m": _Entry(sample_dpmpp_2m, "none"),
    "dpmpp_2m_sde": _Entry(sample_dpmpp_2m_sde, "brownian"),
    "dpmpp_2m_sde_heun": _Entry(sample_dpmpp_2m_sde_heun, "brownian"),
    "dpmpp_3m_sde": _Entry(sample_dpmpp_3m_sde, "brownian"),
    "lcm": _Entry(sample_lcm, "seeded"),
    "ddim": _Entry(sample_ddim, "churn"),
    "uni_pc": _Entry(sample_uni_pc, "none"),
    "uni_pc_bh2": _Entry(sample_uni_pc_bh2, "none"),
}

#: Sampler names, in ComfyUI's combo order (the subset Loom implements).
SAMPLER_NAMES: list[str] = list(_SAMPLERS)


def get_sampler(name: str) -> Sampler:
    """The sampler ``name`` with the uniform signature of :class:`Sampler`.

    ``seed`` / ``noise_sampler`` reach the samplers that draw noise and are ignored by the others;
    ``options`` (eta, s_noise, s_churn, order, ...) go to the sampler function as keywords.
    """
    try:
        entry = _SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}") from None

    def run(
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        extra_args: dict[str, Any] | None = None,
        callback: Callback | None = None,
        seed: int | None = None,
        noise_sampler: NoiseSampler | None = None,
        **options: Any,
    ) -> Tensor:
        if entry.noise != "none":
            options = {**options, "seed": seed, "noise_sampler": noise_sampler}
        return entry.fn(model, x, sigmas, extra_args=extra_args, callback=callback, **options)

    run.__name__ = f"sampler_{name}"
    run.__doc__ = entry.fn.__doc__
    return run


def ksample(
    model: Denoiser,
    model_sampling: ModelSampling,
    sampler_name: str,
    sigmas: Tensor,
    noise: Tensor,
    latent_image: Tensor,
    *,
    seed: int | None,
    denoise_mask: Tensor | None = None,
    callback: Callback | None = None,
    extra_args: dict[str, Any] | None = None,
    sampler_options: dict[str, Any] | None = None,
    device_rng: bool = False,
) -> Tensor:
    """One KSampler run as ComfyUI performs it, on model-space latents.

    ``model`` is the guided denoiser (e.g. a ``CFGDenoiser``); ``noise`` the seed noise (zeros for
    add_noise = disable), ``latent_image`` the input latent already in the model's latent space (the
    caller applies the latent format's scale before and after), ``denoise_mask`` the prepared mask
    (``guidance.prepare_mask``) or None. Steps:

    1. no sigmas -> ``latent_image`` is returned unchanged;
    2. with a mask, the denoiser is wrapped in ``InpaintDenoiser``; ``ddim`` re-noises the kept region
       with fresh noise from seed + 1, every other sampler with ``noise``;
    3. x = noise_scaling(sigmas[0], noise, latent_image, max_denoise) (sqrt(1 + sigma^2) scaling when
       starting from sigma_max);
    4. the sampler runs with per-step noise seeded by ``seed``; inverse_noise_scaling is applied.

    ``device_rng=True`` draws the ancestral samplers' per-step noise on the sampling device as ComfyUI
    does (GPU parity with ComfyUI, device-dependent); the default draws it on the CPU.
    """
    if sigmas.numel() == 0:
        return latent_image
    sigmas = sigmas.to(noise.device)
    if denoise_mask is not None:
        mask_noise = noise
        if sampler_name in RANDOM_INPAINT_NOISE_SAMPLERS:
            mask_noise = noise_mod.inpaint_noise(noise.shape, 41 if seed is None else seed)
            mask_noise = mask_noise.to(device=noise.device, dtype=noise.dtype)
        model = InpaintDenoiser(
            model,
            latent_image,
            denoise_mask,
            mask_noise,
            noise_scaling=lambda sigma, n, latent: model_sampling.noise_scaling(sigma, n, latent),
        )
    x = model_sampling.noise_scaling(sigmas[0], noise, latent_image, is_max_denoise(model_sampling, sigmas))
    sampler = get_sampler(sampler_name)
    noise_sampler = None
    if device_rng and _SAMPLERS[sampler_name].noise == "seeded":
        noise_sampler = SeededNoiseSampler(x, seed, device_rng=True)
    samples = sampler(
        model,
        x,
        sigmas,
        extra_args=extra_args,
        callback=callback,
        seed=seed,
        noise_sampler=noise_sampler,
        **(sampler_options or {}),
    )
    return model_sampling.inverse_noise_scaling(sigmas[-1], samples)
