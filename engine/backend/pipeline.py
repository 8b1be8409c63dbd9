"""The sampling pipeline: one sampling run, for KSampler and the custom-sampling nodes alike.

KSampler nodes hand over a :class:`SamplingRequest` (seed, steps, cfg, sampler, scheduler, prompts,
latent, the step range); :func:`as_custom` turns it into the :class:`CustomRequest` that
SamplerCustom(Advanced) hand over directly: explicit sigmas, a noise source, a guidance (CFG, basic,
dual CFG, perp-neg; :mod:`engine.backend.guiders`) and a sampler with options. With the
:class:`ModelTraits` of the model, :func:`sample_custom` resizes an empty latent to the model's
channels, draws ComfyUI's noise, prepares the conditioning (SDXL adm vectors, areas, ControlNets, a
9-channel model's inpaint channels, the x4 upscaler's low-res image) and runs the sampler. It knows nothing of
graphs or events: progress and previews leave through ``on_step``, and the UNet comes from
``unet_session``, which keeps it placed on the device for the run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend import conditioning, control_apply, guiders, model_sampling
from engine.backend.flow_apply import FlowTransformerCall, flux_concat
from engine.backend.flow_control import flow_control_function
from engine.backend.guidance import (
    CFGDenoiser,
    CfgFunction,
    GuidanceHooks,
    GuidanceStep,
    OperationSpec,
    ParameterizedModel,
    SamplingPatch,
    gather_hooks,
    operation_hooks,
    prepare_mask,
    repeat_to_batch,
)
from engine.backend.guiders import Guidance, NoiseSource, SamplerChoice
from engine.backend.hook_schedule import HookRunner
from engine.backend.image_concat import ip2p_concat, ip2p_source
from engine.backend.ksampler import ksample
from engine.backend.latent_formats import LatentFormat
from engine.backend.model_sampling import ModelSampling
from engine.backend.node_samplers import NODE_SAMPLERS
from engine.backend.noise import prepare_noise
from engine.backend.samplers import MODEL_SAMPLING_SAMPLERS, Sampler, get_sampler, needs_uncond
from engine.backend.schedules import sigmas_for
from engine.backend.unclip import unclip_adm, unclip_pooled
from engine.backend.unet import UNetModel, sdxl_adm, sdxl_refiner_adm
from engine.backend.x4_upscaler import x4_concat, x4_label, x4_source

Latent = dict[str, Any]
#: (step done, steps in all, the denoised estimate of this step or None): progress and previews.
StepCallback = Callable[[int, int, Tensor | None], None]
#: (latent shape, whether CFG doubles the batch) -> the diffusion model (a UNet, or an SD3/Flux transformer), kept
#: on the device for the run.
UNetSession = Callable[[tuple[int, ...], bool], AbstractContextManager[Any]]
#: Patch the run's UNet with these (file, strength, kind) on top of the model's own patches (hooks).
HookWeights = Callable[[tuple[tuple[Any, float, str], ...]], None]

#: Conditioning (or latent) keys that feed a 9-channel inpainting model's extra channels.
INPAINT_KEYS = ("concat_mask", "concat_latent_image")
#: The scaled SD VAE latent of a mid-grey (0 in -1..1) image, per channel: the "empty" masked image (ComfyUI's).
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


@dataclass(frozen=True)
class ModelTraits:
    """What sampling needs to know of a model family."""

    label: str  # for messages, e.g. "SDXL"
    prediction: Literal["eps", "v", "flow"]
    latent_channels: int
    latent_format: LatentFormat  # VAE latent <-> model latent
    #: How conditioning extras become y ("pooled": SD3's and Flux's pooled text vector as it is).
    adm: Literal["sdxl", "sdxl_refiner", "unclip", "x4_upscaler", "pooled"] | None
    inpaint: bool  # a 9-channel inpainting UNet
    preview_format: str  # latent2rgb factors: "sd1", "sdxl" or "playground_v2.5"
    pre_cfg: tuple[OperationSpec, ...] = ()  # operations on each step's guidance before CFG (in order)
    patches: tuple[SamplingPatch, ...] = ()  # the MODEL's guidance and UNet patches (in order)
    sampling_spec: model_sampling.SamplingSpec | None = None  # a ModelSampling* node's choice
    ip2p: bool = False  # an 8-channel InstructPix2Pix UNet (engine/backend/image_concat.py)
    x4_upscaler: bool = False  # the 7-channel SD x4 upscaler (engine/backend/x4_upscaler.py)
    schedule: tuple[float, float] = (0.00085, 0.012)  # the first and last beta of the scaled-linear schedule
    flux_concat: Literal["fill", "control"] | None = None  # Flux Fill / Depth-Canny extra input channels


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


@dataclass(frozen=True)
class CustomRequest:
    """One sampling run with everything explicit: what SamplerCustom(Advanced) hand over, and what a
    :class:`SamplingRequest` becomes (:func:`as_custom`)."""

    sigmas: Tensor
    noise: NoiseSource
    guidance: Guidance
    sampler: SamplerChoice
    latent: Latent


@dataclass(frozen=True)
class SampleResult:
    """The sampled LATENT and the last step's denoised estimate (``denoised_output``; the sampled
    latent itself when no step ran)."""

    latent: Latent
    denoised: Latent


def model_sampling_for(traits: ModelTraits) -> ModelSampling:
    """The model sampling (noise levels, parameterization) of a model with ``traits``, on the CPU."""
    return model_sampling.model_sampling_for(traits.prediction, traits.sampling_spec, traits.schedule)


def as_custom(request: SamplingRequest, traits: ModelTraits, device: torch.device | None = None) -> CustomRequest:
    """A KSampler request with its sigmas computed (on ``device``) from scheduler / steps / denoise / the step
    range."""
    ms = model_sampling_for(traits).to(device or "cpu")
    sigmas = sigmas_for(ms, request.scheduler, request.sampler_name, request.steps, denoise=request.denoise,
                        start_step=request.start_step, last_step=request.last_step,
                        force_full_denoise=request.force_full_denoise)
    return CustomRequest(sigmas=sigmas, noise=NoiseSource(request.seed, request.add_noise),
                         guidance=Guidance.classifier_free(request.positive, request.negative, request.cfg),
                         sampler=SamplerChoice(request.sampler_name, source="KSampler"), latent=request.latent)


def sample(request: SamplingRequest, traits: ModelTraits, unet_session: UNetSession,
           load_controlnet: control_apply.Resolve, *, device: torch.device, dtype: torch.dtype,
           on_step: StepCallback, hook_weights: HookWeights | None = None) -> Latent:
    """Run a KSampler ``request``; returns a new LATENT dict (other keys of the request's latent kept)."""
    return sample_custom(as_custom(request, traits, device), traits, unet_session, load_controlnet, device=device,
                         dtype=dtype, on_step=on_step, hook_weights=hook_weights).latent


def sample_custom(request: CustomRequest, traits: ModelTraits, unet_session: UNetSession,
                  load_controlnet: control_apply.Resolve, *, device: torch.device, dtype: torch.dtype,
                  on_step: StepCallback, hook_weights: HookWeights | None = None) -> SampleResult:
    """Run ``request``: the one sampling path of every sampler node. ``hook_weights`` patches the UNet for
    entries with hooks (engine/backend/hook_schedule.py); without it such entries are refused."""
    sampler = resolve_sampler(request.sampler)
    latent = _model_latent(request.latent["samples"].float(), traits)
    ms = model_sampling_for(traits).to(device)
    sigmas = request.sigmas.float().to(device)
    if sigmas.numel() == 0:  # denoise 0 or nothing left to do: the input latent itself, as ComfyUI
        unchanged = {**request.latent, "samples": latent}
        return SampleResult(unchanged, unchanged)
    guidance = request.guidance
    # cfg++ samplers read the uncond prediction every step: run it even at cfg 1, as ComfyUI does
    force_uncond = needs_uncond(request.sampler.name) or bool(getattr(sampler, "needs_uncond", False))
    uncond_pass = not math.isclose(guidance.batch_scale, 1.0) or guidance.needs_uncond or force_uncond
    with unet_session(tuple(latent.shape), uncond_pass) as unet:  # placed, with room for a step
        seed = request.noise.seed
        noise = (prepare_noise(latent, seed, request.latent.get("batch_index")) if request.noise.enabled
                 else torch.zeros_like(latent))
        runner = HookRunner(hook_weights, ms.percent_to_sigma) if hook_weights is not None else None
        denoiser, denoise_mask, hooks = _denoiser(request, traits, unet, ms, load_controlnet, latent, device,
                                                  dtype, force_uncond, runner)
        total = max(len(sigmas) - 1, 1)
        last: list[Tensor] = []

        def callback(info: dict[str, Any]) -> None:
            denoised = info.get("denoised")
            if denoised is not None:
                last[:] = [denoised]
            on_step(min(int(info["i"]) + 1, total), total, denoised)

        with torch.inference_mode():
            start = traits.latent_format.to_model(latent).to(device)
            try:
                out = ksample(denoiser, ms, request.sampler.name, sigmas, noise.to(device), start,
                              seed=seed, denoise_mask=denoise_mask, callback=callback,
                              denoise_mask_fn=hooks.denoise_mask_fn, sampler=sampler,
                              sampler_options=_sampler_options(request.sampler, ms))
            finally:
                if runner is not None:
                    runner.finish()  # the model's own weights again, exactly
    to_vae = traits.latent_format.to_vae
    result = {**request.latent, "samples": to_vae(out.float()).cpu()}
    denoised_out = {**request.latent, "samples": to_vae(last[0].float()).cpu()} if last else result
    return SampleResult(result, denoised_out)


def resolve_sampler(choice: SamplerChoice) -> Sampler:
    """The sampler function of ``choice``; a clear error when this build does not have it."""
    if choice.name in NODE_SAMPLERS:
        return NODE_SAMPLERS[choice.name]
    try:
        return get_sampler(choice.name)
    except ValueError:
        raise ValueError(f"{choice.source}: the sampler {choice.name!r} is not implemented in Loom yet; "
                         "pick another sampler (KSamplerSelect lists the ones it has)") from None


def _sampler_options(choice: SamplerChoice, ms: ModelSampling) -> dict[str, Any]:
    """The choice's options, plus the model sampling for the samplers that read it (SA-Solver)."""
    options = choice.kwargs
    if choice.name in MODEL_SAMPLING_SAMPLERS:
        options.setdefault("model_sampling", ms)
    return options


def _model_latent(latent: Tensor, traits: ModelTraits) -> Tensor:
    """The latent with the model's channel count: an empty (all-zero) latent is resized, any other refused."""
    channels = traits.latent_channels
    if latent.shape[1] == channels:
        return latent
    if latent.any():
        raise ValueError(f"the latent has {latent.shape[1]} channels but {traits.label} models use "
                         f"{channels}; make the latent with this model's VAE")
    return latent.new_zeros((latent.shape[0], channels, *latent.shape[2:]))


def _denoiser(request: CustomRequest, traits: ModelTraits, unet: Any, ms: ModelSampling,
              load_controlnet: control_apply.Resolve, latent: Tensor, device: torch.device,
              dtype: torch.dtype, force_uncond: bool = False,
              runner: HookRunner | None = None) -> tuple[CFGDenoiser, Tensor | None, GuidanceHooks]:
    """The guided denoiser over the prepared conditioning, the inpaint noise mask (if any) and the MODEL's hooks."""
    guidance = request.guidance
    model: UNetModel | FlowTransformerCall = unet if isinstance(unet, UNetModel) else FlowTransformerCall(unet)
    if isinstance(model, FlowTransformerCall):
        adm = adm_builder("pooled", request.noise.seed, model.pooled_width)
    else:
        adm = adm_builder(traits.adm, request.noise.seed, model.config.adm_in_channels or 0)

    def prepare(conds: list[Any]) -> list[conditioning.CondSpec]:
        return conditioning.prepare(conds, latent.shape, device=device, dtype=dtype, adm=adm,
                                    percent_to_sigma=ms.percent_to_sigma)

    pos = prepare(guidance.positive)
    negative = control_apply.share_with_uncond(guidance.positive, guidance.negative)  # legacy ControlNetApply
    pos, neg = conditioning.pair_areas(pos, prepare(negative))  # every area gets an opposite (ComfyUI's process_conds)
    mask = request.latent.get("noise_mask")
    denoise_mask = None if mask is None else prepare_mask(mask, latent.shape, device)
    concat = None
    if traits.inpaint:
        sources = inpaint_sources(request.latent, guidance.positive)
        concat = inpaint_concat(sources, traits.latent_format.to_model(latent), denoise_mask,
                                traits.latent_format).to(device)
    elif traits.ip2p:
        concat = ip2p_concat(ip2p_source(guidance.positive, request.latent), traits.latent_format.to_model(latent),
                             traits.latent_format).to(device)
    elif traits.flux_concat is not None:
        concat = flux_concat(inpaint_sources(request.latent, guidance.positive), traits.latent_format.to_model(latent),
                             denoise_mask, traits.latent_format, fill=traits.flux_concat == "fill").to(device)
    elif traits.x4_upscaler:
        image, augmentation = x4_source(guidance.positive)
        concat = x4_concat(image, latent, augmentation, request.noise.seed).to(device)
    hooks = gather_hooks(traits.patches, ms)
    extra = [prepare(c) for c in hooks.extra_conditioning]
    middle = prepare(guidance.middle) if guidance.uses_middle else []
    conds = [pos, neg, *extra, *([middle] if middle else [])]
    control_fn: Callable[..., Any] | None
    if isinstance(model, FlowTransformerCall):
        control_fn = flow_control_function(conds, ms, load_controlnet, model.model)
    else:
        control_fn = control_apply.control_function(conds, ms, load_controlnet, model.config, unet=model)
    apply = conditioning.UNetApply(model, control_fn, concat=concat, patches=hooks.unet_patches, hooks=runner)
    denoiser = guided_denoiser(conditioning.ScheduledModel(ParameterizedModel(apply, ms), runner), guidance, hooks,
                               pos, neg, middle, extra, pre_cfg=operation_hooks(traits.pre_cfg, ms),
                               force_uncond=force_uncond)
    return denoiser, denoise_mask, hooks


def guided_denoiser(model_fn: Callable[..., Tensor], guidance: Guidance, hooks: GuidanceHooks, pos: Any, neg: Any,
                    middle: Any, extra: Sequence[Any] = (), *, pre_cfg: Sequence[Any] = (),
                    force_uncond: bool = False) -> CFGDenoiser:
    """The CFG denoiser for ``guidance`` over prepared conditionings (opaque here): the hooks' extra
    conditionings, then ``middle`` where the guidance runs it, batched after uncond and cond."""
    chunks = [*extra, middle] if guidance.uses_middle else list(extra)
    return CFGDenoiser(model_fn, pos, neg, guidance.batch_scale, pre_cfg=(*pre_cfg, *hooks.pre_cfg),
                       cfg_function=guidance_function(guidance, hooks), post_cfg=hooks.post_cfg, extra=chunks,
                       needs_uncond=hooks.needs_uncond or guidance.needs_uncond or force_uncond)


def guidance_function(guidance: Guidance, hooks: GuidanceHooks) -> CfgFunction | None:
    """The CFG denoiser's combination for ``guidance`` (None: plain CFG or the MODEL's own cfg function)."""
    if guidance.kind in ("cfg", "basic"):
        return hooks.cfg_function
    middle_index = len(hooks.extra_conditioning)

    def parts(step: GuidanceStep) -> tuple[Tensor, Tensor, Tensor]:
        cond = step.cond_denoised
        uncond = step.uncond_denoised if step.uncond_denoised is not None else torch.zeros_like(cond)
        middle = step.extra_denoised[middle_index] if guidance.uses_middle else torch.zeros_like(cond)
        return cond, uncond, middle

    if guidance.kind == "perp_neg":
        def perp(step: GuidanceStep) -> Tensor:
            cond, uncond, empty = parts(step)
            return guiders.perp_neg(cond, uncond, empty, guidance.cfg, guidance.neg_scale)
        return perp
    model_cfg = hooks.cfg_function

    def pair(step: GuidanceStep) -> Callable[[Tensor, Tensor, float], Tensor] | None:
        if model_cfg is None:
            return None
        return lambda c, u, s: model_cfg(dataclasses.replace(step, cond_denoised=c, uncond_denoised=u, cfg_scale=s))

    def dual(step: GuidanceStep) -> Tensor:
        cond, uncond, middle = parts(step)
        return guiders.dual_cfg(cond, middle, uncond, guidance.cfg, guidance.cfg2, guidance.nested, pair(step))
    return dual


def adm_builder(kind: str | None, seed: int = 0, channels: int = 0) -> conditioning.AdmFn | None:
    """How a conditioning entry becomes the adm vector y (None for SD1/SD2); ``seed`` (the sampler's) seeds
    the noise augmentation of unCLIP entries (SDXL Revision, SD2 unCLIP: :mod:`engine.backend.unclip`);
    ``channels`` is the UNet's adm width (SD2 unCLIP without image embeddings gets zeros)."""
    if kind == "unclip":
        return _unclip_adm(seed, channels)
    if kind == "x4_upscaler":
        return lambda extras, width, height: x4_label(extras)
    if kind == "pooled":
        return _pooled_adm(channels)
    if kind == "sdxl":
        def base(extras: Mapping[str, Any], width: int, height: int) -> Tensor:
            w, h = extras.get("width", 768), extras.get("height", 768)  # ComfyUI's defaults
            return sdxl_adm(_sdxl_pooled(extras, seed), w, h, extras.get("crop_w", 0), extras.get("crop_h", 0),
                            extras.get("target_width", w), extras.get("target_height", h))
        return base
    if kind == "sdxl_refiner":
        def refiner(extras: Mapping[str, Any], width: int, height: int) -> Tensor:
            return sdxl_refiner_adm(_sdxl_pooled(extras, seed), extras.get("width", 768),
                                    extras.get("height", 768), extras.get("aesthetic_score", 6.0),
                                    extras.get("crop_w", 0), extras.get("crop_h", 0))
        return refiner
    return None


def _pooled_adm(channels: int) -> conditioning.AdmFn:
    """SD3's and Flux's y: the entry's pooled text vector (zeros where it has none, as ComfyUI's Flux)."""
    def build(extras: Mapping[str, Any], width: int, height: int) -> Tensor:
        pooled = extras.get("pooled_output")
        if pooled is None:
            return torch.zeros((1, channels))
        if pooled.shape[-1] != channels:
            raise ValueError(f"the conditioning's pooled output has {pooled.shape[-1]} values but this model takes "
                             f"{channels}; encode the prompt with this model's text encoders (CLIP-L + CLIP-G for "
                             "SD3, CLIP-L for Flux)")
        return pooled
    return build


def _unclip_adm(seed: int, channels: int) -> conditioning.AdmFn:
    def build(extras: Mapping[str, Any], width: int, height: int) -> Tensor:
        entries = extras.get("unclip_conditioning")
        if not entries:
            return torch.zeros((1, channels))
        adm = unclip_adm(entries, seed)
        if adm.shape[-1] != channels:
            raise ValueError(f"unCLIPConditioning: the CLIP vision embeddings make an adm vector of {adm.shape[-1]} "
                             f"values but this unCLIP model takes {channels}; use the CLIP vision model of the "
                             "checkpoint (unCLIPCheckpointLoader's CLIP_VISION output)")
        return adm
    return build


def _sdxl_pooled(extras: Mapping[str, Any], seed: int) -> Tensor:
    """SDXL's pooled vector: the text encoder's, or (Revision) the noise-augmented image embeddings of the
    entry's ``unclip_conditioning`` (ComfyUI's sdxl_pooled)."""
    if extras.get("pooled_output") is None:
        raise ValueError("an SDXL conditioning entry has no pooled_output (the text encoder's pooled vector): make the "
                         "conditioning with CLIPTextEncode / CLIPTextEncodeSDXL and this model's CLIP")
    pooled: Tensor = extras["pooled_output"]
    if not extras.get("unclip_conditioning"):
        return pooled
    image = unclip_pooled(extras["unclip_conditioning"], seed)
    if image.shape[-1] != pooled.shape[-1]:
        raise ValueError(f"unCLIPConditioning: the CLIP vision embeddings have {image.shape[-1]} values but this "
                         f"SDXL model's pooled vector has {pooled.shape[-1]}; use the ViT-bigG CLIP vision model "
                         "(clip_vision_g.safetensors) for SDXL Revision")
    return image.to(device=pooled.device, dtype=pooled.dtype).expand(pooled.shape[0], -1)


def inpaint_sources(latent_image: Latent, positive: list[Any]) -> dict[str, Any]:
    """Where a 9-channel model's ``concat_mask`` / ``concat_latent_image`` come from: the first positive
    conditioning entry that has them (InpaintModelConditioning), else the latent."""
    for source in (*(extras for _, extras in positive), latent_image):
        found = {key: source[key] for key in INPAINT_KEYS if source.get(key) is not None}
        if found:
            return found
    return {}


def inpaint_concat(sources: dict[str, Any], model_latent: Tensor, denoise_mask: Tensor | None,
                   latent_format: LatentFormat) -> Tensor:
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
        image = latent_format.to_model(image.float().to(model_latent.device))
        if image.shape[-2:] != model_latent.shape[-2:]:
            image = F.interpolate(image, size=tuple(model_latent.shape[-2:]), mode="bilinear")
        image = repeat_to_batch(image, model_latent.shape[0])
    return torch.cat([denoise_mask[:, :1].round().to(model_latent), image.to(model_latent)], dim=1)
