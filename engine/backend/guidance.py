"""Denoiser wrappers: eps / v-prediction scalings, classifier-free guidance, inpaint masking.

Everything here is a *denoiser*: ``denoiser(x, sigma, **kwargs) -> denoised`` with ``x`` the noisy
latent in k-diffusion's variance-exploding convention (``x = x0 + sigma * noise``) and ``sigma`` a
tensor of shape [B]. The samplers in :mod:`engine.backend.samplers` only ever see such a callable.

The layers, outermost first, as a KSampler run stacks them::

    InpaintDenoiser(                       # optional: keep the unmasked latent (ComfyUI's KSamplerX0Inpaint)
        CFGDenoiser(                       # cond + uncond in one batch, uncond + (cond - uncond) * cfg
            model_fn=ParameterizedModel(   # sigma -> timestep, input / output scalings of eps or v models
                apply_model, model_sampling),
            cond=..., uncond=..., cfg_scale=...,
            pre_cfg=(GuidanceOperation(...), ...)))  # hooks on the two predictions before they combine

``cond`` and ``uncond`` are opaque to this module: they travel to ``model_fn`` untouched, so the
UNet wrapper decides what they hold (context tensors, pooled ``y``, ControlNet residual providers,
area / strength entries).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

#: ``model_fn(x_batch, sigma_batch, conds, **kwargs) -> denoised_batch``. ``x_batch`` holds
#: ``len(conds)`` chunks of equal size, stacked along dim 0; chunk ``k`` is to be denoised under ``conds[k]``.
ModelFn = Callable[..., Tensor]

#: ``apply_model(x_in, timestep, conds, **kwargs) -> raw network output`` (eps or v), chunked as ``ModelFn``.
ApplyModel = Callable[..., Tensor]

#: ``hook(cond_out, uncond_out, sigma) -> (cond_out, uncond_out)``: ComfyUI's ``sampler_pre_cfg_function``.
#: It sees the two denoised predictions of a step before CFG combines them; ``uncond_out`` is None when
#: cfg 1 skipped the uncond pass. ``sigma`` is the step's sigma, shape [B].
PreCfgHook = Callable[[Tensor, Tensor | None, Tensor], tuple[Tensor, Tensor | None]]


class Parameterization(Protocol):
    """What :class:`ParameterizedModel` needs from a model sampling (``model_sampling.ModelSampling`` fits)."""

    def timestep(self, sigma: Tensor) -> Tensor: ...

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor: ...

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor: ...


def _expand_sigma(sigma: Tensor, like: Tensor) -> Tensor:
    """``sigma`` of shape [B] (or a scalar) reshaped to broadcast against ``like`` ([B, C, H, W])."""
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1))


class ParameterizedModel:
    """Turns a raw eps / v network into a denoiser ``model_fn(x, sigma, conds) -> denoised``.

    Scales the input to unit variance (``x / sqrt(sigma^2 + sigma_data^2)``), feeds the network the
    discrete timestep nearest to sigma (as a float tensor) and converts its output to the denoised
    estimate (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
    Table 1; v-prediction from Salimans & Ho 2022, "Progressive Distillation").
    """

    def __init__(self, apply_model: ApplyModel, model_sampling: Parameterization) -> None:
        self.apply_model = apply_model
        self.model_sampling = model_sampling

    def __call__(self, x: Tensor, sigma: Tensor, conds: Sequence[Any], **kwargs: Any) -> Tensor:
        ms = self.model_sampling
        x_in = ms.calculate_input(sigma, x)
        timestep = ms.timestep(sigma).float()
        output = self.apply_model(x_in, timestep, conds, **kwargs)
        return ms.calculate_denoised(sigma, output, x)


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").

    ``denoised = uncond + (cond - uncond) * cfg_scale``. Both predictions come from ONE call of
    ``model_fn`` on a batch of twice the size, uncond chunk first, cond chunk second (the order
    ComfyUI batches them in). When ``cfg_scale`` is 1 (``math.isclose``) the uncond pass is skipped
    and ``model_fn`` sees only the cond chunk. ``batched=False`` runs the two chunks as two calls
    (less peak memory, same result up to float rounding). ``pre_cfg`` hooks run in order on the two
    predictions before they combine (see :data:`PreCfgHook`).
    """

    def __init__(
        self,
        model_fn: ModelFn,
        cond: Any,
        uncond: Any,
        cfg_scale: float,
        *,
        batched: bool = True,
        pre_cfg: Sequence[PreCfgHook] = (),
    ) -> None:
        self.model_fn = model_fn
        self.cond = cond
        self.uncond = uncond
        self.cfg_scale = float(cfg_scale)
        self.batched = batched
        self.pre_cfg = tuple(pre_cfg)

    @property
    def skips_uncond(self) -> bool:
        return math.isclose(self.cfg_scale, 1.0)

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        if self.skips_uncond:
            cond_out, _ = self._before_cfg(self.model_fn(x, sigma, [self.cond], **kwargs), None, sigma)
            return cond_out
        if self.batched:
            out = self.model_fn(torch.cat([x, x]), torch.cat([sigma, sigma]), [self.uncond, self.cond], **kwargs)
            uncond_out, cond_out = out.chunk(2)
        else:
            uncond_out = self.model_fn(x, sigma, [self.uncond], **kwargs)
            cond_out = self.model_fn(x, sigma, [self.cond], **kwargs)
        cond_out, hooked_uncond = self._before_cfg(cond_out, uncond_out, sigma)
        return cfg_combine(cond_out, uncond_out if hooked_uncond is None else hooked_uncond, self.cfg_scale)

    def _before_cfg(self, cond_out: Tensor, uncond_out: Tensor | None, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        for hook in self.pre_cfg:
            cond_out, uncond_out = hook(cond_out, uncond_out, sigma)
        return cond_out, uncond_out


def cfg_combine(cond_out: Tensor, uncond_out: Tensor, cfg_scale: float) -> Tensor:
    """``uncond + (cond - uncond) * cfg_scale``."""
    return uncond_out + (cond_out - uncond_out) * cfg_scale


class OperationSpec(Protocol):
    """A latent operation to apply before CFG within a part of the schedule (a MODEL handle's entry)."""

    @property
    def operation(self) -> Callable[..., Tensor]: ...

    @property
    def start_percent(self) -> float: ...

    @property
    def end_percent(self) -> float: ...


class PercentToSigma(Protocol):
    """What :func:`operation_hooks` needs of a model sampling."""

    def percent_to_sigma(self, percent: float) -> float: ...


#: ``percent_to_sigma(0)``: a sigma above every schedule's first step.
ALWAYS_SIGMA = 999999999.9


@dataclass(frozen=True)
class GuidanceOperation:
    """A LATENT_OPERATION on the guidance of each step (ComfyUI's LatentApplyOperationCFG).

    The operation transforms ``cond - uncond``, the difference of the two *denoised* predictions in
    the model's latent space, and the uncond prediction is added back, so CFG then gives
    ``uncond + operation(cond - uncond) * cfg``. Without an uncond pass (cfg 1) it transforms the cond
    prediction itself. It acts only on steps whose sigma lies in ``[sigma_end, sigma_start]``.
    """

    operation: Callable[..., Tensor]
    sigma_start: float
    sigma_end: float

    def active(self, sigma: Tensor) -> bool:
        if self.sigma_end <= 0.0 and self.sigma_start >= ALWAYS_SIGMA:
            return True  # the whole schedule: no need to read sigma back from the device
        current = float(sigma.reshape(-1)[0])
        return self.sigma_end <= current <= self.sigma_start

    def __call__(self, cond_out: Tensor, uncond_out: Tensor | None, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self.active(sigma):
            return cond_out, uncond_out
        if uncond_out is None:
            return self.operation(latent=cond_out), None
        return self.operation(latent=cond_out - uncond_out) + uncond_out, uncond_out


def operation_hooks(specs: Sequence[OperationSpec], model_sampling: PercentToSigma) -> tuple[GuidanceOperation, ...]:
    """Pre-CFG hooks for a MODEL's operations, their percent windows turned into sigmas."""
    return tuple(GuidanceOperation(spec.operation, model_sampling.percent_to_sigma(spec.start_percent),
                                   model_sampling.percent_to_sigma(spec.end_percent)) for spec in specs)


def default_noise_scaling(sigma: Tensor, noise: Tensor, latent: Tensor) -> Tensor:
    """``latent + noise * sigma``: the latent noised to ``sigma`` (eps and v models)."""
    return latent + noise * _expand_sigma(sigma, noise)


class InpaintDenoiser:
    """Keeps the unmasked part of ``latent_image`` at every step (ComfyUI's ``KSamplerX0Inpaint``).

    ``denoise_mask`` is 1 where the image is regenerated and 0 where it is kept, already shaped like
    the latent (see :func:`prepare_mask`). Before the inner call the kept region of ``x`` is replaced
    by ``latent_image`` noised to the current sigma with ``noise``; after it the kept region of the
    prediction is replaced by ``latent_image``::

        x        = x * mask + noise_scaling(sigma, noise, latent_image) * (1 - mask)
        denoised = denoised * mask + latent_image * (1 - mask)
    """

    def __init__(
        self,
        denoiser: Callable[..., Tensor],
        latent_image: Tensor,
        denoise_mask: Tensor,
        noise: Tensor,
        noise_scaling: Callable[[Tensor, Tensor, Tensor], Tensor] = default_noise_scaling,
    ) -> None:
        self.denoiser = denoiser
        self.latent_image = latent_image
        self.mask = denoise_mask
        self.noise = noise
        self.noise_scaling = noise_scaling

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        keep = 1.0 - self.mask
        x = x * self.mask + self.noise_scaling(sigma, self.noise, self.latent_image) * keep
        denoised = self.denoiser(x, sigma, **kwargs)
        return denoised * self.mask + self.latent_image * keep


def repeat_to_batch(tensor: Tensor, batch_size: int) -> Tensor:
    """Truncate or tile ``tensor`` along dim 0 to ``batch_size`` rows."""
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        reps = math.ceil(batch_size / tensor.shape[0])
        return tensor.repeat((reps,) + (1,) * (tensor.ndim - 1))[:batch_size]
    return tensor


def prepare_mask(noise_mask: Tensor, latent_shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """A LATENT's ``noise_mask`` ([B?, H, W] or [B, 1, H, W]) resized to the latent ``[B, C, h, w]``.

    Bilinear resize to (h, w), repeated over the channels and tiled / truncated to the batch size,
    as ComfyUI prepares the denoise mask before sampling.
    """
    batch, channels, height, width = (int(s) for s in latent_shape)
    mask = noise_mask.reshape((-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])).float()
    mask = F.interpolate(mask, size=(height, width), mode="bilinear")
    mask = torch.cat([mask] * channels, dim=1)
    mask = repeat_to_batch(mask, batch)
    return mask if device is None else mask.to(device)
