"""KSampler and KSamplerAdvanced: denoise a latent with a model, prompts, a sampler and a schedule.

Same seed, same settings, same checkpoint -> the same latent as ComfyUI: noise is one CPU
``torch.randn`` of the whole batch seeded with the seed; sigmas, samplers, CFG and noise scaling
follow ComfyUI (engine/backend). Progress is reported every step and an interrupt stops the
sampler between steps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.backend import conditioning, control_apply
from engine.backend.guidance import CFGDenoiser, ParameterizedModel, prepare_mask, repeat_to_batch
from engine.backend.ksampler import ksample
from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import prepare_noise
from engine.backend.preview import preview_jpeg
from engine.backend.samplers import SAMPLER_NAMES
from engine.backend.schedules import SCHEDULER_NAMES, sigmas_for
from engine.backend.unet import sdxl_adm, sdxl_refiner_adm
from engine.context import RunContext
from engine.models.handles import ModelHandle
from engine.models.loaders import ModelFamily
from engine.node import SEED_MAX, Input, Node, Output
from engine.types import COMBO, CONDITIONING, FLOAT, INT, LATENT, MODEL

Latent = dict[str, Any]


def model_sampling(family: ModelFamily) -> ModelSampling:
    """SD's discrete schedule (1000 steps, scaled linear betas) with the family's prediction type."""
    return ModelSampling.from_betas("v_prediction" if family.prediction == "v" else "eps")


def adm_builder(family: ModelFamily) -> conditioning.AdmFn | None:
    """How a conditioning entry becomes SDXL's adm vector y (None for SD1/SD2)."""
    if family.name == "sdxl":
        def base(extras: dict[str, Any], width: int, height: int) -> torch.Tensor:
            w, h = extras.get("width", 768), extras.get("height", 768)  # ComfyUI's defaults
            return sdxl_adm(extras["pooled_output"], w, h, extras.get("crop_w", 0), extras.get("crop_h", 0),
                            extras.get("target_width", w), extras.get("target_height", h))
        return base
    if family.name == "sdxl_refiner":
        def refiner(extras: dict[str, Any], width: int, height: int) -> torch.Tensor:
            return sdxl_refiner_adm(extras["pooled_output"], extras.get("width", 768), extras.get("height", 768),
                                    extras.get("aesthetic_score", 6.0), extras.get("crop_w", 0),
                                    extras.get("crop_h", 0))
        return refiner
    return None


#: Conditioning (or latent) keys that feed a 9-channel inpainting model's extra channels.
INPAINT_KEYS = ("concat_mask", "concat_latent_image")
#: The scaled SD VAE latent of a mid-grey (0 in -1..1) image, per channel: the "empty" masked image (ComfyUI's).
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def inpaint_sources(latent_image: Latent, positive: list[Any]) -> dict[str, Any]:
    """Where a 9-channel model's ``concat_mask`` / ``concat_latent_image`` come from: the first positive
    conditioning entry that has them (InpaintModelConditioning), else the latent."""
    for source in (*(extras for _, extras in positive), latent_image):
        found = {key: source[key] for key in INPAINT_KEYS if source.get(key) is not None}
        if found:
            return found
    return {}


def inpaint_concat(sources: dict[str, Any], model_latent: torch.Tensor, denoise_mask: torch.Tensor | None,
                   scale: float) -> torch.Tensor:
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


def sample(ctx: RunContext, model: ModelHandle, *, seed: int, steps: int, cfg: float, sampler_name: str,
           scheduler: str, positive: list[Any], negative: list[Any], latent_image: Latent, denoise: float = 1.0,
           add_noise: bool = True, start_step: int | None = None, last_step: int | None = None,
           force_full_denoise: bool = False) -> Latent:
    """One sampling run; returns a new LATENT dict (other keys of ``latent_image`` kept)."""
    manager = ctx.models
    device, dtype = manager.device, manager.dtype
    latent = latent_image["samples"].float()
    channels = model.family.latent_channels
    if latent.shape[1] != channels:
        if latent.any():
            raise ValueError(f"the latent has {latent.shape[1]} channels but {model.family.label} models use "
                             f"{channels}; make the latent with this model's VAE")
        latent = latent.new_zeros((latent.shape[0], channels, *latent.shape[2:]))  # an empty latent: resize
    ms = model_sampling(model.family).to(device)
    sigmas = sigmas_for(ms, scheduler, sampler_name, steps, denoise=denoise, start_step=start_step,
                        last_step=last_step, force_full_denoise=force_full_denoise).to(device)
    if sigmas.numel() == 0:  # denoise 0 or nothing left to do: the input latent itself, as ComfyUI
        return {**latent_image, "samples": latent}
    # The UNet stays on the device for the whole run, with room made for a step's working memory.
    with manager.sampling(model, tuple(latent.shape), cfg=cfg != 1.0) as unet:
        noise = prepare_noise(latent, seed, latent_image.get("batch_index")) if add_noise else torch.zeros_like(latent)
        scale = model.family.latent_scale_factor
        mask = latent_image.get("noise_mask")
        adm = adm_builder(model.family)
        pos = conditioning.prepare(positive, latent.shape, device=device, dtype=dtype, adm=adm)
        negative = control_apply.share_with_uncond(positive, negative)  # legacy ControlNetApply
        neg = conditioning.prepare(negative, latent.shape, device=device, dtype=dtype, adm=adm)
        denoise_mask = None if mask is None else prepare_mask(mask, latent.shape, device)
        concat = inpaint_concat(inpaint_sources(latent_image, positive), latent * scale, denoise_mask,
                                scale) if model.family.is_inpaint else None
        control_fn = control_apply.control_function([pos, neg], ms, manager.controlnet, unet.config)
        apply = conditioning.UNetApply(unet, control_fn, concat=None if concat is None else concat.to(device))
        denoiser = CFGDenoiser(ParameterizedModel(apply, ms), pos, neg, cfg)
        total = max(len(sigmas) - 1, 1)

        latent_format = "sdxl" if model.family.is_sdxl else "sd1"

        def on_step(info: dict[str, Any]) -> None:
            if ctx.previews and info.get("denoised") is not None:
                ctx.preview("JPEG", preview_jpeg(info["denoised"], latent_format))
            ctx.progress(min(int(info["i"]) + 1, total), total)

        with torch.inference_mode():
            out = ksample(denoiser, ms, sampler_name, sigmas, noise.to(device), (latent * scale).to(device),
                          seed=seed, denoise_mask=denoise_mask, callback=on_step)
    return {**latent_image, "samples": (out.float() / scale).cpu()}


def _common_inputs() -> tuple[Input, ...]:
    return (
        Input("cfg", FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
              tooltip="Classifier-free guidance: how strongly to follow the prompt."),
        Input("sampler_name", COMBO, choices=SAMPLER_NAMES),
        Input("scheduler", COMBO, choices=SCHEDULER_NAMES),
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("latent_image", LATENT),
    )


class KSampler(Node):
    """Denoise a latent: the heart of text-to-image and image-to-image."""

    category = "sampling"
    inputs = (
        Input("model", MODEL),
        Input("seed", INT, default=0, min=0, max=SEED_MAX, control_after_generate=True,
              tooltip="The noise seed."),
        Input("steps", INT, default=20, min=1, max=10000),
        *_common_inputs(),
        Input("denoise", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
              tooltip="Below 1, keep part of the input latent (image-to-image)."),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, model: ModelHandle, seed: int, steps: int, cfg: float, sampler_name: str,
            scheduler: str, positive: list[Any], negative: list[Any], latent_image: Latent,
            denoise: float) -> tuple[Latent]:
        return (sample(ctx, model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                       scheduler=scheduler, positive=positive, negative=negative, latent_image=latent_image,
                       denoise=denoise),)


class KSamplerAdvanced(Node):
    """KSampler with control over noise and the range of steps (for multi-pass workflows)."""

    category = "sampling"
    inputs = (
        Input("model", MODEL),
        Input("add_noise", COMBO, choices=("enable", "disable")),
        Input("noise_seed", INT, default=0, min=0, max=SEED_MAX, control_after_generate=True),
        Input("steps", INT, default=20, min=1, max=10000),
        *_common_inputs(),
        Input("start_at_step", INT, default=0, min=0, max=10000),
        Input("end_at_step", INT, default=10000, min=0, max=10000),
        Input("return_with_leftover_noise", COMBO, choices=("disable", "enable")),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, model: ModelHandle, add_noise: str, noise_seed: int, steps: int, cfg: float,
            sampler_name: str, scheduler: str, positive: list[Any], negative: list[Any], latent_image: Latent,
            start_at_step: int, end_at_step: int, return_with_leftover_noise: str) -> tuple[Latent]:
        return (sample(ctx, model, seed=noise_seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                       scheduler=scheduler, positive=positive, negative=negative, latent_image=latent_image,
                       add_noise=add_noise == "enable", start_step=start_at_step, last_step=end_at_step,
                       force_full_denoise=return_with_leftover_noise == "disable"),)


SAMPLING_NODES = (KSampler, KSamplerAdvanced)
