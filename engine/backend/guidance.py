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

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
#: ``mask_fn(mask, sigma, sigmas) -> mask``: the inpaint mask for the step at ``sigma`` of the run's schedule
#: ``sigmas`` (ComfyUI's denoise_mask_function; DifferentialDiffusion).
MaskFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class GuidanceStep:
    """One step's guidance as the hooks see it (ComfyUI's ``args`` of its cfg / post-cfg functions).

    Predictions are *denoised* estimates in the model's latent space. ``uncond_denoised`` is None when
    cfg 1 skipped the uncond pass (and no hook asked for it). ``extra_denoised`` holds the predictions
    for the extra conditionings hooks asked for (:class:`GuidanceHooks`), in order. ``model_fn`` with
    ``cond`` / ``uncond`` runs the model again (self-attention / perturbed-attention guidance).
    """

    x: Tensor
    sigma: Tensor
    cfg_scale: float
    cond_denoised: Tensor
    uncond_denoised: Tensor | None
    extra_denoised: tuple[Tensor, ...]
    model_fn: ModelFn
    cond: Any
    uncond: Any
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class StepPreCfg:
    """A pre-CFG hook that sees the whole step, as ComfyUI's pre-cfg functions see their ``args``.

    ``fn(step) -> (cond_out, uncond_out)`` gets a :class:`GuidanceStep` whose ``cond_denoised`` /
    ``uncond_denoised`` are the predictions as the earlier pre-CFG hooks left them; it may read the
    step's input ``x``, ``cfg_scale`` and ``extra_denoised`` (APG, TCFG). It goes in the same
    ``pre_cfg`` list as plain hooks, so the hooks of all patches keep their install order.
    """

    fn: Callable[[GuidanceStep], tuple[Tensor, Tensor | None]]


#: ``cfg_function(step) -> denoised``: replaces ``uncond + (cond - uncond) * cfg`` (ComfyUI's sampler_cfg_function).
CfgFunction = Callable[[GuidanceStep], Tensor]
#: ``hook(step, denoised) -> denoised``: after CFG, in order (ComfyUI's sampler_post_cfg_function).
PostCfgHook = Callable[[GuidanceStep, Tensor], Tensor]
#: ``observer(step, denoised)``: sees every guided step (cfg++ samplers read ``uncond_denoised`` here).
#: A sampler passes it to the denoiser as the keyword argument ``on_guidance``.
GuidanceObserver = Callable[[GuidanceStep, Tensor], None]


@dataclass
class GuidanceHooks:
    """What a MODEL's sampling patches install for one sampling run, gathered before it starts.

    Each patch on a MODEL handle (``ModelHandle.sampling_patches``) is an object with
    ``install(hooks, model_sampling)`` that appends to these lists (see :class:`SamplingPatch`); the
    pipeline then builds the :class:`CFGDenoiser` and the UNet call from them. ``extra_conditioning``
    holds raw CONDITIONING values whose predictions the hooks need (PerpNeg's empty prompt, Safe
    Latent Diffusion's safety concept); they run in the same batch as cond and uncond.
    ``unet_patches`` maps a hook point of the UNet forward to its patches, in order (see
    :mod:`engine.backend.unet`). ``denoise_mask_fn(mask, sigma, sigmas) -> mask`` reshapes an inpaint mask
    per step (DifferentialDiffusion); ``sigmas`` is the run's schedule.
    """

    pre_cfg: list[PreCfgHook | StepPreCfg] = field(default_factory=list)
    cfg_function: CfgFunction | None = None
    post_cfg: list[PostCfgHook] = field(default_factory=list)
    extra_conditioning: list[Any] = field(default_factory=list)
    needs_uncond: bool = False
    unet_patches: dict[str, list[Any]] = field(default_factory=dict)
    denoise_mask_fn: MaskFn | None = None

    def add_extra_conditioning(self, conditioning: Any) -> int:
        """Ask for the prediction of one more conditioning; returns its index in ``extra_denoised``."""
        self.extra_conditioning.append(conditioning)
        return len(self.extra_conditioning) - 1

    def add_unet_patch(self, point: str, patch: Any) -> None:
        self.unet_patches.setdefault(point, []).append(patch)


class SamplingPatch(Protocol):
    """A patch a MODEL handle carries (torch-side object, frozen and picklable where it can be)."""

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None: ...


def gather_hooks(patches: Sequence[SamplingPatch], model_sampling: Any) -> GuidanceHooks:
    """The hooks of a MODEL's sampling patches, installed in order."""
    hooks = GuidanceHooks()
    for patch in patches:
        patch.install(hooks, model_sampling)
    return hooks


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

    ``denoised = uncond + (cond - uncond) * cfg_scale``. All predictions come from ONE call of
    ``model_fn`` on a batch of the chunks, uncond chunk first, cond chunk second (the order ComfyUI
    batches them in), then the ``extra`` conditionings hooks asked for. When ``cfg_scale`` is 1
    (``math.isclose``) and nothing needs it, the uncond pass is skipped. ``batched=False`` runs the
    chunks as separate calls (less peak memory, same result up to float rounding).

    Hooks (:class:`GuidanceHooks`): ``pre_cfg`` run in order on the two predictions before they
    combine (see :data:`PreCfgHook`); ``cfg_function`` replaces the combination; ``post_cfg`` run in
    order on the result. A caller may pass ``on_guidance=observer`` to see each step (cfg++ samplers).
    """

    def __init__(
        self,
        model_fn: ModelFn,
        cond: Any,
        uncond: Any,
        cfg_scale: float,
        *,
        batched: bool = True,
        pre_cfg: Sequence[PreCfgHook | StepPreCfg] = (),
        cfg_function: CfgFunction | None = None,
        post_cfg: Sequence[PostCfgHook] = (),
        extra: Sequence[Any] = (),
        needs_uncond: bool = False,
    ) -> None:
        self.model_fn = model_fn
        self.cond = cond
        self.uncond = uncond
        self.cfg_scale = float(cfg_scale)
        self.batched = batched
        self.pre_cfg = tuple(pre_cfg)
        self.cfg_function = cfg_function
        self.post_cfg = tuple(post_cfg)
        self.extra = tuple(extra)
        self.needs_uncond = needs_uncond

    @property
    def skips_uncond(self) -> bool:
        return math.isclose(self.cfg_scale, 1.0) and not self.needs_uncond

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        observer: GuidanceObserver | None = kwargs.pop("on_guidance", None)
        chunks = ([] if self.skips_uncond else [self.uncond]) + [self.cond, *self.extra]
        outs = self._predict(x, sigma, chunks, kwargs)
        uncond_out = None if self.skips_uncond else outs.pop(0)
        cond_out, extra_out = outs[0], tuple(outs[1:])
        step = GuidanceStep(x, sigma, self.cfg_scale, cond_out, uncond_out, extra_out, self.model_fn,
                            self.cond, self.uncond, kwargs)
        cond_out, uncond_out = self._before_cfg(step)
        step = dataclasses.replace(step, cond_denoised=cond_out, uncond_denoised=uncond_out)
        if self.cfg_function is not None:
            denoised = self.cfg_function(step)
        elif uncond_out is None:
            denoised = cond_out
        else:
            denoised = cfg_combine(cond_out, uncond_out, self.cfg_scale)
        for hook in self.post_cfg:
            denoised = hook(step, denoised)
        if observer is not None:
            observer(step, denoised)
        return denoised

    def _predict(self, x: Tensor, sigma: Tensor, chunks: list[Any], kwargs: dict[str, Any]) -> list[Tensor]:
        if len(chunks) == 1 or not self.batched:
            return [self.model_fn(x, sigma, [chunk], **kwargs) for chunk in chunks]
        n = len(chunks)
        out = self.model_fn(torch.cat([x] * n), torch.cat([sigma] * n), chunks, **kwargs)
        return list(out.chunk(n))

    def _before_cfg(self, step: GuidanceStep) -> tuple[Tensor, Tensor | None]:
        cond_out, uncond_out = step.cond_denoised, step.uncond_denoised
        for hook in self.pre_cfg:
            if isinstance(hook, StepPreCfg):
                seen = dataclasses.replace(step, cond_denoised=cond_out, uncond_denoised=uncond_out)
                cond_out, uncond_out = hook.fn(seen)
            else:
                cond_out, uncond_out = hook(cond_out, uncond_out, step.sigma)
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
    the latent (see :func:`prepare_mask`); ``mask_fn(mask, sigma, sigmas)`` may reshape it per step
    (DifferentialDiffusion), ``sigmas`` being the run's schedule (required with ``mask_fn``). Before the
    inner call the kept region of ``x`` is replaced by ``latent_image`` noised to the current sigma with
    ``noise``; after it the kept region of the prediction is replaced by ``latent_image``::

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
        mask_fn: MaskFn | None = None,
        sigmas: Tensor | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.latent_image = latent_image
        self.mask = denoise_mask
        self.noise = noise
        self.noise_scaling = noise_scaling
        self.mask_fn = mask_fn
        self.sigmas = sigmas
        if mask_fn is not None and sigmas is None:
            raise ValueError("InpaintDenoiser: a mask_fn needs the run's sigmas (pass sigmas=)")

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        mask = self.mask
        if self.mask_fn is not None and self.sigmas is not None:
            mask = self.mask_fn(mask, sigma, self.sigmas)
        keep = 1.0 - mask
        x = x * mask + self.noise_scaling(sigma, self.noise, self.latent_image) * keep
        denoised = self.denoiser(x, sigma, **kwargs)
        return denoised * mask + self.latent_image * keep


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
