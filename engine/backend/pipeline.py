"""The sampling pipeline: one KSampler run from a :class:`SamplingRequest`.

Nodes hand over a request (seed, steps, cfg, sampler, scheduler, prompts, latent, the step range)
and the :class:`ModelTraits` of the model; :func:`sample` resizes an empty latent to the model's
channels, computes the sigmas, draws ComfyUI's noise, prepares the conditioning (SDXL adm vectors,
areas, ControlNets, a 9-channel model's inpaint channels) and runs the sampler. It knows nothing of
graphs or events: progress and previews leave through ``on_step``, and the UNet comes from
``unet_session``, which keeps it placed on the device for the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend import conditioning, control_apply, model_sampling
from engine.backend.guidance import (
    CFGDenoiser,
    GuidanceHooks,
    OperationSpec,
    ParameterizedModel,
    SamplingPatch,
    gather_hooks,
    operation_hooks,
    prepare_mask,
    repeat_to_batch,
)
from engine.backend.ksampler import ksample
from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import prepare_noise
from engine.backend.schedules import sigmas_for
from engine.backend.unet import UNetModel, sdxl_adm, sdxl_refiner_adm

Latent = dict[str, Any]
#: (step done, steps in all, the denoised estimate of this step or None): progress and previews.
StepCallback = Callable[[int, int, Tensor | None], None]
#: (latent shape, whether CFG doubles the batch) -> the UNet, kept on the device for the run.
UNetSession = Callable[[tuple[int, ...], bool], AbstractContextManager[UNetModel]]

#: Conditioning (or latent) keys that feed a 9-channel inpainting model's extra channels.
INPAINT_KEYS = ("concat_mask", "concat_latent_image")
#: The scaled SD VAE latent of a mid-grey (0 in -1..1) image, per channel: the "empty" masked image (ComfyUI's).
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


@dataclass(frozen=True)
class ModelTraits:
    """What sampling needs to know of a model family."""

    label: str  # for messages, e.g. "SDXL"
    prediction: Literal["eps", "v"]
    latent_channels: int
    latent_scale: float  # VAE latent -> model latent
    adm: Literal["sdxl", "sdxl_refiner"] | None  # how conditioning extras become the adm vector y
    inpaint: bool  # a 9-channel inpainting UNet
    preview_format: str  # latent2rgb factors: "sd1" or "sdxl"
    pre_cfg: tuple[OperationSpec, ...] = ()  # operations on each step's guidance before CFG (in order)
    patches: tuple[SamplingPatch, ...] = ()  # the MODEL's guidance and UNet patches (in order)
    sampling_spec: model_sampling.SamplingSpec | None = None  # a ModelSampling* node's choice


@dataclass(frozen=True)
class SamplingRequest:
    """One KSampler / KSamplerAdvanced run, as its inputs say it."""

    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    positive: list[Any]
    negative: list[Any]
    latent: Latent
    denoise: float = 1.0
    add_noise: bool = True
    start_step: int | None = None
    last_step: int | None = None
    force_full_denoise: bool = False


def sample(request: SamplingRequest, traits: ModelTraits, unet_session: UNetSession,
           load_controlnet: control_apply.Resolve, *, device: torch.device, dtype: torch.dtype,
           on_step: StepCallback) -> Latent:
    """Run ``request``; returns a new LATENT dict (other keys of the request's latent kept)."""
    latent = _model_latent(request.latent["samples"].float(), traits)
    ms = model_sampling.model_sampling_for(traits.prediction, traits.sampling_spec).to(device)
    sigmas = sigmas_for(ms, request.scheduler, request.sampler_name, request.steps, denoise=request.denoise,
                        start_step=request.start_step, last_step=request.last_step,
                        force_full_denoise=request.force_full_denoise).to(device)
    if sigmas.numel() == 0:  # denoise 0 or nothing left to do: the input latent itself, as ComfyUI
        return {**request.latent, "samples": latent}
    with unet_session(tuple(latent.shape), request.cfg != 1.0) as unet:  # placed, with room for a step
        noise = (prepare_noise(latent, request.seed, request.latent.get("batch_index")) if request.add_noise
                 else torch.zeros_like(latent))
        scale = traits.latent_scale
        denoiser, denoise_mask, hooks = _denoiser(request, traits, unet, ms, load_controlnet, latent, device,
                                                  dtype)
        total = max(len(sigmas) - 1, 1)

        def callback(info: dict[str, Any]) -> None:
            on_step(min(int(info["i"]) + 1, total), total, info.get("denoised"))

        with torch.inference_mode():
            out = ksample(denoiser, ms, request.sampler_name, sigmas, noise.to(device), (latent * scale).to(device),
                          seed=request.seed, denoise_mask=denoise_mask, callback=callback,
                          denoise_mask_fn=hooks.denoise_mask_fn)
    return {**request.latent, "samples": (out.float() / scale).cpu()}


def _model_latent(latent: Tensor, traits: ModelTraits) -> Tensor:
    """The latent with the model's channel count: an empty (all-zero) latent is resized, any other refused."""
    channels = traits.latent_channels
    if latent.shape[1] == channels:
        return latent
    if latent.any():
        raise ValueError(f"the latent has {latent.shape[1]} channels but {traits.label} models use "
                         f"{channels}; make the latent with this model's VAE")
    return latent.new_zeros((latent.shape[0], channels, *latent.shape[2:]))


def _denoiser(request: SamplingRequest, traits: ModelTraits, unet: UNetModel, ms: ModelSampling,
              load_controlnet: control_apply.Resolve, latent: Tensor, device: torch.device,
              dtype: torch.dtype) -> tuple[CFGDenoiser, Tensor | None, GuidanceHooks]:
    """The CFG denoiser over the prepared conditioning, the inpaint noise mask (if any) and the MODEL's hooks."""
    adm = adm_builder(traits.adm)
    pos = conditioning.prepare(request.positive, latent.shape, device=device, dtype=dtype, adm=adm,
                               percent_to_sigma=ms.percent_to_sigma)
    negative = control_apply.share_with_uncond(request.positive, request.negative)  # legacy ControlNetApply
    neg = conditioning.prepare(negative, latent.shape, device=device, dtype=dtype, adm=adm,
                               percent_to_sigma=ms.percent_to_sigma)
    pos, neg = conditioning.pair_areas(pos, neg)  # every area gets an opposite one (ComfyUI's process_conds)
    mask = request.latent.get("noise_mask")
    denoise_mask = None if mask is None else prepare_mask(mask, latent.shape, device)
    concat = None
    if traits.inpaint:
        sources = inpaint_sources(request.latent, request.positive)
        concat = inpaint_concat(sources, latent * traits.latent_scale, denoise_mask, traits.latent_scale).to(device)
    hooks = gather_hooks(traits.patches, ms)
    extra = [conditioning.prepare(c, latent.shape, device=device, dtype=dtype, adm=adm,
                                  percent_to_sigma=ms.percent_to_sigma) for c in hooks.extra_conditioning]
    control_fn = control_apply.control_function([pos, neg, *extra], ms, load_controlnet, unet.config)
    apply = conditioning.UNetApply(unet, control_fn, concat=concat, patches=hooks.unet_patches)
    denoiser = CFGDenoiser(conditioning.ScheduledModel(ParameterizedModel(apply, ms)), pos, neg, request.cfg,
                           pre_cfg=(*operation_hooks(traits.pre_cfg, ms), *hooks.pre_cfg),
                           cfg_function=hooks.cfg_function, post_cfg=hooks.post_cfg, extra=extra,
                           needs_uncond=hooks.needs_uncond)
    return denoiser, denoise_mask, hooks


def adm_builder(kind: str | None) -> conditioning.AdmFn | None:
    """How a conditioning entry becomes SDXL's adm vector y (None for SD1/SD2)."""
    if kind == "sdxl":
        def base(extras: Mapping[str, Any], width: int, height: int) -> Tensor:
            w, h = extras.get("width", 768), extras.get("height", 768)  # ComfyUI's defaults
            return sdxl_adm(extras["pooled_output"], w, h, extras.get("crop_w", 0), extras.get("crop_h", 0),
                            extras.get("target_width", w), extras.get("target_height", h))
        return base
    if kind == "sdxl_refiner":
        def refiner(extras: Mapping[str, Any], width: int, height: int) -> Tensor:
            return sdxl_refiner_adm(extras["pooled_output"], extras.get("width", 768), extras.get("height", 768),
                                    extras.get("aesthetic_score", 6.0), extras.get("crop_w", 0),
                                    extras.get("crop_h", 0))
        return refiner
    return None


def inpaint_sources(latent_image: Latent, positive: list[Any]) -> dict[str, Any]:
    """Where a 9-channel model's ``concat_mask`` / ``concat_latent_image`` come from: the first positive
    conditioning entry that has them (InpaintModelConditioning), else the latent."""
    for source in (*(extras for _, extras in positive), latent_image):
        found = {key: source[key] for key in INPAINT_KEYS if source.get(key) is not None}
        if found:
            return found
    return {}


def inpaint_concat(sources: dict[str, Any], model_latent: Tensor, denoise_mask: Tensor | None,
                   scale: float) -> Tensor:
    """The 5 extra input channels of a 9-channel inpainting UNet: the rounded mask, then the masked image latent.

    The mask is ``concat_mask`` when ``sources`` has one, else the noise mask; the image is
    ``concat_latent_image``, else the latent itself (VAEEncodeForInpaint's latent is the image with the
    masked pixels greyed out). Without any mask the whole image is to be generated: ones and a grey image.
    """
    if sources.get("concat_mask") is not None:
        denoise_mask = prepare_mask(sources["concat_mask"], model_latent.shape, model_latent.device)
    if denoise_mask is None:
        blank = torch.tensor(BLANK_INPAINT_LATENT, dtype=model_latent.dtype, device=model_latent.device)
        blank = blank.reshape(1, -1, 1, 1).expand_as(model_latent)
        return torch.cat([torch.ones_like(model_latent[:, :1]), blank], dim=1)
    image = sources.get("concat_latent_image")
    if image is None:
        image = model_latent
    else:
        image = image.float().to(model_latent.device) * scale
        if image.shape[-2:] != model_latent.shape[-2:]:
            image = F.interpolate(image, size=tuple(model_latent.shape[-2:]), mode="bilinear")
        image = repeat_to_batch(image, model_latent.shape[0])
    return torch.cat([denoise_mask[:, :1].round().to(model_latent), image.to(model_latent)], dim=1)
