"""Model sampling: the noise levels of an SD model and its parameterization, with ComfyUI's names
and semantics.

The first of three parts that meet only through tensors (the split of Karras et al. 2022):

* the *model sampling* (:class:`ModelSampling`): the noise levels of an SD model (discrete, LCM's
  distilled 50, or continuous EDM / V) and the eps / v / EDM / x0 / LCM scalings;
* the *schedule* (:mod:`engine.backend.schedules`);
* the *sampler* (:mod:`engine.backend.samplers`).

:func:`engine.backend.ksampler.ksample` strings these together as ComfyUI's KSampler does.
"""

from __future__ import annotations

import copy
import math
from enum import StrEnum
from typing import Protocol

import torch
from torch import Tensor


class Prediction(StrEnum):
    """What the network predicts, hence how its output becomes the denoised estimate."""

    EPS = "eps"
    V_PREDICTION = "v_prediction"
    EDM = "edm"  # Karras et al. 2022's F_theta preconditioning (Table 1), e.g. Playground v2.5
    X0 = "x0"  # the output is the denoised latent
    LCM = "lcm"  # eps, then the consistency model's boundary-condition skip / out scalings
    IMG_TO_IMG = "img_to_img"  # x0 output and an unscaled input (Lotus-style image-to-image models)
    #: Rectified flow (SD3, Flux, AuraFlow; ComfyUI's CONST): ``x = (1 - sigma) x0 + sigma noise``, the network
    #: predicts the velocity ``noise - x0`` from the unscaled input.
    FLOW = "flow"


#: LCM's boundary-condition constants (Luo et al. 2023; diffusers' LCMScheduler: sigma_data 0.5, timestep_scaling 10).
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0
#: The discrete timesteps LCM distillation kept (skipping T // 50 at a time).
LCM_ORIGINAL_STEPS = 50


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
        """A copy (of the same kind) whose sigma tables live on ``device``."""
        moved = copy.copy(self)
        moved.sigmas = self.sigmas.to(device)
        moved.log_sigmas = self.log_sigmas.to(device)
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
        """The sigma reached after ``percent`` (0..1) of the diffusion; 0 -> 999999999.9, 1 -> 0.

        In between: ``sigma((1 - percent) * 999)`` (ComfyUI's fixed 999, whatever the table's length).
        """
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)).item())

    # Parameterization ------------------------------------------------------------------------------

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        """The network input ``x / sqrt(sigma^2 + sigma_data^2)`` (c_in of Karras et al. 2022);
        ``x`` itself for img_to_img models."""
        if self.prediction in (Prediction.IMG_TO_IMG, Prediction.FLOW):
            return x
        return x / (_expand(sigma, x) ** 2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        """The denoised estimate from the network output, by :attr:`prediction`.

        * eps: ``x - out * sigma``.
        * v (Salimans & Ho 2022): ``x * sd^2 / (sigma^2 + sd^2) - out * sigma * sd / sqrt(sigma^2 + sd^2)``.
        * edm: the same with ``+ out`` (Karras et al. 2022, Table 1: c_skip x + c_out F).
        * x0 / img_to_img: ``out`` as it is.
        * lcm: ``c_out * (x - out * sigma) + c_skip * x`` with Luo et al. 2023's boundary condition at
          ``t' = 10 * timestep(sigma)``: ``c_skip = 0.25 / (t'^2 + 0.25)``, ``c_out = t' / sqrt(t'^2 + 0.25)``.
        """
        s = _expand(sigma, model_output)
        kind = self.prediction
        if kind in (Prediction.EPS, Prediction.FLOW):  # flow: x - sigma * (noise - x0) = x0
            return x - model_output * s
        if kind in (Prediction.X0, Prediction.IMG_TO_IMG):
            return model_output
        if kind is Prediction.LCM:
            return self._lcm_denoised(sigma, model_output, x)
        sd = self.sigma_data
        sign = 1.0 if kind is Prediction.EDM else -1.0
        return x * sd**2 / (s**2 + sd**2) + sign * model_output * s * sd / (s**2 + sd**2) ** 0.5

    def _lcm_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        scaled_t = _expand(self.timestep(sigma).to(x.dtype) * LCM_TIMESTEP_SCALING, model_output)
        s = _expand(sigma, model_output)
        x0 = x - model_output * s
        sd2 = LCM_SIGMA_DATA**2
        c_skip = sd2 / (scaled_t**2 + sd2)
        c_out = scaled_t / (scaled_t**2 + sd2) ** 0.5
        return c_out * x0 + c_skip * x

    def noise_scaling(self, sigma: Tensor | float, noise: Tensor, latent: Tensor, max_denoise: bool = False) -> Tensor:
        """The starting point: ``latent + noise * (sqrt(1 + sigma^2) if max_denoise else sigma)``; for flow
        models the interpolation ``sigma * noise + (1 - sigma) * latent``."""
        s = _expand(sigma, noise)
        if self.prediction is Prediction.FLOW:
            return s * noise + (1.0 - s) * latent
        scale = torch.sqrt(1.0 + s**2) if max_denoise else s
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor:
        """Identity for eps / v models; flow models divide by ``1 - sigma`` (1 at the end of a full run)."""
        if self.prediction is Prediction.FLOW:
            return latent / (1.0 - _expand(sigma, latent))
        return latent


def is_max_denoise(model_sampling: ModelSampling, sigmas: Tensor) -> bool:
    """True when sampling starts at (or above) the model's largest sigma (full txt2img noise)."""
    sigma_max = float(model_sampling.sigma_max)
    sigma = float(sigmas[0])
    return math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max


class DistilledModelSampling(ModelSampling):
    """The noise levels an LCM-distilled model was trained on: every (T // 50)-th discrete sigma.

    ``sigmas[i]`` is the sigma of timestep ``i * skip + skip - 1`` (skip = T // 50, i = 0..49), so
    :meth:`timestep` snaps to those timesteps and :meth:`sigma` interpolates between them
    (ComfyUI's ModelSamplingDiscreteDistilled).
    """

    def __init__(self, full_sigmas: Tensor, prediction: Prediction | str = Prediction.LCM,
                 original_steps: int = LCM_ORIGINAL_STEPS) -> None:
        full_sigmas = torch.as_tensor(full_sigmas).float()
        total = len(full_sigmas)
        self.skip_steps = total // original_steps
        picked = [total - 1 - k * self.skip_steps for k in range(original_steps)][::-1]
        super().__init__(full_sigmas[picked], prediction)

    def timestep(self, sigma: Tensor) -> Tensor:
        index = super().timestep(sigma)
        return index * self.skip_steps + (self.skip_steps - 1)

    def sigma(self, timestep: Tensor | float) -> Tensor:
        timestep = torch.as_tensor(timestep)
        index = (timestep.float() - (self.skip_steps - 1)) / self.skip_steps
        return super().sigma(index.to(timestep.device))


class ContinuousEDMSampling(ModelSampling):
    """Continuous noise levels in [sigma_min, sigma_max] with EDM's ``c_noise = log(sigma) / 4``
    (Karras et al. 2022, Table 1) as the network's timestep.

    ``sigmas`` holds 1000 log-spaced values for the schedulers that read a table (ComfyUI's
    ModelSamplingContinuousEDM).
    """

    def __init__(self, sigma_min: float, sigma_max: float, sigma_data: float = 1.0,
                 prediction: Prediction | str = Prediction.EPS) -> None:
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"continuous model sampling needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        super().__init__(sigmas, prediction, sigma_data)

    def timestep(self, sigma: Tensor) -> Tensor:
        return 0.25 * torch.as_tensor(sigma).log()

    def sigma(self, timestep: Tensor | float) -> Tensor:
        return (torch.as_tensor(timestep) / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Log-linear between sigma_max (0) and sigma_min (1); 0 -> 999999999.9, 1 -> 0."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(float(self.sigma_min))
        return math.exp((math.log(float(self.sigma_max)) - log_min) * (1.0 - percent) + log_min)


class ContinuousVSampling(ContinuousEDMSampling):
    """Continuous noise levels with the v-diffusion timestep ``t = atan(sigma) * 2 / pi`` in 0..1
    (Salimans & Ho 2022's angle parameterization; ComfyUI's ModelSamplingContinuousV)."""

    def timestep(self, sigma: Tensor) -> Tensor:
        return torch.as_tensor(sigma).atan() / math.pi * 2

    def sigma(self, timestep: Tensor | float) -> Tensor:
        return (torch.as_tensor(timestep) * math.pi / 2).tan()


def time_snr_shift(shift: float, t: Tensor | float) -> Tensor:
    """SD3's timestep shift (Esser et al. 2024, Sec. 5.3.2): ``shift * t / (1 + (shift - 1) * t)``."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def flux_time_shift(mu: float, t: Tensor | float) -> Tensor:
    """Flux's resolution-dependent shift: ``e^mu / (e^mu + (1 / t - 1))``."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


class DiscreteFlowSampling(ModelSampling):
    """Rectified-flow noise levels ``sigma(t) = shift(t / multiplier)`` for t = 1..1000 / 1000 * multiplier,
    with the network's timestep ``sigma * multiplier`` (ComfyUI's ModelSamplingDiscreteFlow: SD3 and SD3.5
    with multiplier 1000, AuraFlow with 1)."""

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0, timesteps: int = 1000) -> None:
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        steps = torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps
        super().__init__(time_snr_shift(self.shift, steps), Prediction.FLOW)

    def timestep(self, sigma: Tensor) -> Tensor:
        return torch.as_tensor(sigma) * self.multiplier

    def sigma(self, timestep: Tensor | float) -> Tensor:
        return time_snr_shift(self.shift, torch.as_tensor(timestep) / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        """1 at the start of the diffusion (0), 0 at its end (1), shifted in between."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(time_snr_shift(self.shift, 1.0 - percent))


class FluxSampling(DiscreteFlowSampling):
    """Flux's flow noise levels: ``sigma(t) = flux_time_shift(shift, t)`` over 10000 steps, the network's
    timestep being sigma itself (ComfyUI's ModelSamplingFlux)."""

    def __init__(self, shift: float = 1.15, timesteps: int = 10000) -> None:
        self.shift = float(shift)
        self.multiplier = 1.0
        steps = torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps
        ModelSampling.__init__(self, flux_time_shift(self.shift, steps), Prediction.FLOW)

    def timestep(self, sigma: Tensor) -> Tensor:
        return torch.as_tensor(sigma)

    def sigma(self, timestep: Tensor | float) -> Tensor:
        return flux_time_shift(self.shift, timestep)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(flux_time_shift(self.shift, 1.0 - percent))


def flux_shift(max_shift: float, base_shift: float, width: int, height: int) -> float:
    """ModelSamplingFlux's shift for an image size: linear in the number of 2x2 latent patches, base_shift at
    256 patches and max_shift at 4096 (a 1024x1024 image)."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return (width * height / (8 * 8 * 2 * 2)) * slope + base_shift - slope * 256


class SamplingSpec(Protocol):
    """What :func:`model_sampling_for` reads of a MODEL's model-sampling choice
    (``engine.models.handles.ModelSamplingSpec`` fits)."""

    @property
    def kind(self) -> str: ...

    @property
    def prediction(self) -> str: ...

    @property
    def zsnr(self) -> bool: ...

    @property
    def sigma_min(self) -> float | None: ...

    @property
    def sigma_max(self) -> float | None: ...

    @property
    def sigma_data(self) -> float: ...

    @property
    def shift(self) -> float: ...

    @property
    def multiplier(self) -> float: ...


#: The kinds of :class:`SamplingSpec`: ComfyUI's ModelSamplingDiscrete / ContinuousEDM / ContinuousV, and the
#: flow kinds of ModelSamplingSD3 / ModelSamplingAuraFlow ("discrete_flow") and ModelSamplingFlux ("flux").
SAMPLING_KINDS = ("discrete", "continuous_edm", "continuous_v", "discrete_flow", "flux")


def model_sampling_for(prediction: str, spec: SamplingSpec | None = None,
                       schedule: tuple[float, float] = (0.00085, 0.012)) -> ModelSampling:
    """The model sampling of an SD1/SD2/SDXL model: its checkpoint's ``prediction`` ("eps" / "v") on
    SD's scaled-linear schedule from ``schedule`` (first and last beta; the x4 upscaler's differ), unless a
    model-sampling node chose ``spec`` (a discrete choice keeps the model's schedule, as ComfyUI's)."""
    start, end = schedule
    if spec is None:
        return ModelSampling.from_betas(Prediction.V_PREDICTION if prediction == "v" else Prediction.EPS,
                                        linear_start=start, linear_end=end)
    kind = Prediction(spec.prediction)
    if spec.kind == "discrete":
        betas = ModelSampling.from_betas(zsnr=spec.zsnr, linear_start=start, linear_end=end)
        if kind is Prediction.LCM:
            return DistilledModelSampling(betas.sigmas, kind)
        return ModelSampling(betas.sigmas, kind)
    if spec.kind == "discrete_flow":
        return DiscreteFlowSampling(spec.shift, spec.multiplier)
    if spec.kind == "flux":
        return FluxSampling(spec.shift)
    if spec.kind not in ("continuous_edm", "continuous_v"):
        raise ValueError(f"unknown model sampling kind {spec.kind!r}; choose one of {', '.join(SAMPLING_KINDS)}")
    if spec.sigma_min is None or spec.sigma_max is None:
        raise ValueError(f"{spec.kind} model sampling needs sigma_min and sigma_max")
    cls = ContinuousEDMSampling if spec.kind == "continuous_edm" else ContinuousVSampling
    return cls(spec.sigma_min, spec.sigma_max, spec.sigma_data, kind)
