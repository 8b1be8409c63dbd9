"""Model sampling: the discrete-time noise levels of an SD model and its parameterization, with
ComfyUI's names and semantics.

The first of three parts that meet only through tensors (the split of Karras et al. 2022):

* the *model sampling* (:class:`ModelSampling`): the discrete noise levels of an SD model and the
  eps / v-prediction scalings;
* the *schedule* (:mod:`engine.backend.schedules`);
* the *sampler* (:mod:`engine.backend.samplers`).

:func:`engine.backend.ksampler.ksample` strings these together as ComfyUI's KSampler does.
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
from torch import Tensor


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
