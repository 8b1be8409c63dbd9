"""Torch-backed SDK operations: sampling (KSampler and custom sampling), VAE, text encoding, conditioning
(ControlNets) and previews.

A node imports this module inside ``run`` (``from engine.sdk import ops``), never at module level, so
registering nodes does not load torch. Each function takes the node's RunContext and the values on
its edges and leaves the tensor work to engine/backend and the ModelProvider.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from engine.backend.conditioning_edit import average, concat_tokens, zeroed
from engine.backend.control_attach import attach_control
from engine.backend.flow_text import FlowTextEncoder
from engine.backend.guiders import Guidance, Guider, NoiseSource, SamplerChoice
from engine.backend.latent_formats import latent_format
from engine.backend.model_sampling import ModelSampling
from engine.backend.node_samplers import PowerNoiseScaler, TauInterval
from engine.backend.noise import prepare_noise
from engine.backend.pipeline import (
    CustomRequest,
    Latent,
    ModelTraits,
    SampleResult,
    SamplingRequest,
    model_sampling_for,
    sample_custom,
)
from engine.backend.pipeline import sample as run_pipeline
from engine.backend.preview import decoded_jpeg, preview_jpeg
from engine.backend.prompt_weights import TokenizedPrompt
from engine.backend.taesd import TinyAutoencoder
from engine.backend.text import ClipTower, TextEncoder
from engine.backend.vae import AutoencoderKL, decode_tiled, encode_tiled
from engine.context import RunContext
from engine.errors import ModelError
from engine.models.embeddings import embedding_lookup, embeddings_fingerprint
from engine.models.families import ModelFamily
from engine.models.handles import (
    ClipHandle,
    FileRef,
    ModelHandle,
    ModelSamplingSpec,
    PreCfgOperation,
    VaeHandle,
    WeightPatch,
)
from engine.models.hooks import clip_schedule
from engine.vae_approx import preview_decoder, tiny_vae_for

__all__ = [
    "CustomRequest", "Guidance", "Guider", "Latent", "ModelTraits", "NoiseSource", "PowerNoiseScaler",
    "SampleResult", "SamplerChoice", "SamplingRequest", "TauInterval", "add_noise", "initial_noise",
    "model_sampling", "sample_custom_run", "TextEncoder", "TokenizedPrompt", "attach_control", "average",
    "concat_tokens", "decode", "decode_tiled_latent", "embedding_lookup", "embeddings_fingerprint", "encode",
    "encode_text", "encode_tiled_image", "from_pixels", "model_traits", "sample", "to_pixels",
    "tokenize_per_tower", "zeroed",
]


def model_traits(family: ModelFamily, pre_cfg: tuple[PreCfgOperation, ...] = (),
                 patches: tuple[Any, ...] = (), sampling_spec: Any = None) -> ModelTraits:
    """What the sampling pipeline needs to know of a checkpoint's family (and of a MODEL's pre-CFG operations)."""
    adm = family.name if family.name in ("sdxl", "sdxl_refiner") else ("unclip" if family.unclip else None)
    if family.is_x4_upscaler:
        adm = "x4_upscaler"
    if family.is_flow:
        adm = "pooled"
        sampling_spec = sampling_spec or default_flow_sampling(family)
    format_name = getattr(sampling_spec, "latent_format", None) or family.latent_format
    preview = format_name or ("sdxl" if family.is_sdxl else "sd1")
    prediction = family.prediction if family.prediction in ("v", "flow") else "eps"
    return ModelTraits(label=family.label, prediction=prediction,  # type: ignore[arg-type]  # checked just above
                       latent_channels=family.latent_channels,
                       latent_format=latent_format(format_name, family.latent_scale_factor),
                       adm=adm,  # type: ignore[arg-type]  # one of the names set just above
                       inpaint=family.is_inpaint, preview_format=preview,
                       pre_cfg=pre_cfg, patches=patches, sampling_spec=sampling_spec, ip2p=family.is_ip2p,
                       x4_upscaler=family.is_x4_upscaler, schedule=(family.linear_start, family.linear_end),
                       flux_concat=_flux_concat(family))


def _flux_concat(family: ModelFamily) -> Literal["fill", "control"] | None:
    """Flux Fill's and Flux Depth/Canny's extra input channels (engine/backend/flow_apply.py)."""
    if family.name != "flux":
        return None
    return "fill" if family.variant == "fill" else "control" if family.variant == "control" else None


def default_flow_sampling(family: ModelFamily) -> ModelSamplingSpec:
    """The model sampling of an SD3/Flux model no ModelSampling* node changed (ComfyUI's defaults): SD3 and
    SD3.5 shift 3.0 on 1000 timesteps; Flux dev shift 1.15 (Flux's own time shift); schnell shift 1.0."""
    if family.name == "flux":
        return ModelSamplingSpec(kind="flux", prediction="flow", shift=1.0 if family.variant == "schnell" else 1.15)
    return ModelSamplingSpec(kind="discrete_flow", prediction="flow", shift=3.0, multiplier=1000.0)


def sample(ctx: RunContext, model: ModelHandle, request: SamplingRequest) -> Latent:
    """One KSampler run of ``model``: progress every step, previews for clients that asked for them."""
    traits = _traits(model)
    models = ctx.models
    return run_pipeline(request, traits, lambda shape, cfg: models.sampling(model, shape, cfg=cfg),
                        models.controlnet, device=models.device, dtype=models.dtype,
                        on_step=_step_reporter(ctx, traits), hook_weights=_hook_weights(ctx, model))


def sample_custom_run(ctx: RunContext, guider: Guider, noise: NoiseSource, sampler: SamplerChoice, sigmas: Tensor,
                      latent: Latent) -> SampleResult:
    """One SamplerCustom(Advanced) run: the same pipeline as KSampler, with explicit sigmas, noise, guidance
    and sampler. Returns the sampled latent and the last step's denoised estimate."""
    model: ModelHandle = guider.model
    traits = _traits(model)
    models = ctx.models
    request = CustomRequest(sigmas=sigmas, noise=noise, guidance=guider.guidance, sampler=sampler, latent=latent)
    return sample_custom(request, traits, lambda shape, cfg: models.sampling(model, shape, cfg=cfg),
                         models.controlnet, device=models.device, dtype=models.dtype,
                         on_step=_step_reporter(ctx, traits), hook_weights=_hook_weights(ctx, model))


def _hook_weights(ctx: RunContext, model: ModelHandle) -> Callable[[tuple[tuple[Any, float, str], ...]], None]:
    """Hooks' LoRAs patched on the run's UNet, on top of the MODEL's own patches (exactly undone with ())."""
    def apply(extra: tuple[tuple[Any, float, str], ...]) -> None:
        ctx.models.unet(model.with_patches(tuple(WeightPatch(file, strength, kind) for file, strength, kind in extra)))
    return apply


def _traits(model: ModelHandle) -> ModelTraits:
    return model_traits(model.family, model.pre_cfg, model.sampling_patches, model.sampling)


def _step_reporter(ctx: RunContext, traits: ModelTraits) -> Callable[[int, int, Tensor | None], None]:
    render = _previewer(ctx, traits) if ctx.previews else None

    def on_step(step: int, total: int, denoised: Tensor | None) -> None:
        if render is not None and denoised is not None:
            ctx.preview("JPEG", render(denoised))
        ctx.progress(step, total)
    return on_step


def _previewer(ctx: RunContext, traits: ModelTraits) -> Callable[[Tensor], bytes]:
    """How a step's model-space denoised latent becomes a preview JPEG under ``ctx.preview_method``: the
    TAESD decoder of the family (loaded once by the model manager, then reused), or latent2rgb."""
    is_sdxl = traits.preview_format != "sd1"
    # No TAESD reads the x4 upscaler's 4x latents (nor has ComfyUI one); Loom has no TAESD3/TAEF1: latent2rgb.
    own_taesd = not traits.x4_upscaler and traits.latent_channels == 4
    path = preview_decoder(ctx.folders, ctx.preview_method, is_sdxl) if own_taesd else None
    if path is None:
        if ctx.preview_method == "taesd" and own_taesd:
            ctx.log.warning("TAESD previews asked for, but models/vae_approx has no %s_decoder; using latent2rgb",
                            tiny_vae_for(is_sdxl))
        return lambda denoised: preview_jpeg(denoised, traits.preview_format)
    try:
        tiny = ctx.models.vae(VaeHandle(FileRef.of(path), "", tiny=tiny_vae_for(is_sdxl)))
    except ModelError as exc:
        ctx.log.warning("TAESD previews: %s; using latent2rgb", exc)
        return lambda denoised: preview_jpeg(denoised, traits.preview_format)
    assert isinstance(tiny, TinyAutoencoder)

    def render(denoised: Tensor) -> bytes:
        latent = traits.latent_format.to_vae(denoised[:1].float())
        with torch.inference_mode():
            return decoded_jpeg(tiny.decode(latent.to(tiny.device)))
    return render


def model_sampling(model: ModelHandle) -> ModelSampling:
    """The model sampling (noise levels and parameterization) ``model`` samples with, on the CPU."""
    return model_sampling_for(_traits(model))


def initial_noise(noise: NoiseSource, latent: Latent) -> Tensor:
    """The NOISE value's initial noise for a LATENT (zeros when disabled), float32 on the CPU."""
    samples = latent["samples"].float()
    if not noise.enabled:
        return torch.zeros_like(samples)
    return prepare_noise(samples, noise.seed, latent.get("batch_index"))


def add_noise(model: ModelHandle, noise: NoiseSource, sigmas: Tensor, latent: Latent) -> Latent:
    """ComfyUI's AddNoise: the latent noised to the schedule's span, ``|sigmas[0] - sigmas[-1]|`` (or
    ``sigmas[0]`` for a single sigma), in the model's latent space; an all-zero latent is not shifted."""
    if len(sigmas) == 0:
        return latent
    traits = _traits(model)
    samples = latent["samples"].float()
    sigma = (sigmas[0] - sigmas[-1]).abs() if len(sigmas) > 1 else sigmas[0]
    if torch.count_nonzero(samples) > 0:
        samples = traits.latent_format.to_model(samples)
    noisy = model_sampling_for(traits).noise_scaling(sigma.float(), initial_noise(noise, latent), samples)
    noisy = torch.nan_to_num(traits.latent_format.to_vae(noisy), nan=0.0, posinf=0.0, neginf=0.0)
    return {**latent, "samples": noisy}


def encode_text(ctx: RunContext, clip: ClipHandle, tokens: dict[str, TokenizedPrompt]) -> list[list[Any]]:
    """CONDITIONING for tokenized prompts (one per text tower), with the pooled output. A CLIP with hooks
    (SetClipHooks) encodes with their LoRAs, once per keyframe range when it schedules them."""
    if clip.hooks is None or not clip.hooks.hooks:
        return [_encoded(ctx, clip, tokens, {})]
    hooks = clip.hooks
    if clip.schedule_clip:
        schedule = clip_schedule(hooks)
    else:
        schedule = [((0.0, 1.0), {hook.ref: 1.0 for hook in hooks.hooks})]
    entries = []
    for (start, end), multipliers in schedule:
        patches = tuple(WeightPatch(hook.file, hook.strength_clip * multipliers[hook.ref], hook.kind)
                        for hook in hooks.hooks if hook.strength_clip * multipliers[hook.ref])
        extras: dict[str, Any] = {"hooks": hooks} if clip.hooks_to_conds else {}
        if clip.schedule_clip:
            extras |= {"clip_start_percent": start, "clip_end_percent": end}
        entries.append(_encoded(ctx, clip.with_patches(patches), tokens, extras))
    return entries


def _encoded(ctx: RunContext, clip: ClipHandle, tokens: dict[str, TokenizedPrompt],
             extras: dict[str, Any]) -> list[Any]:
    encoder = ctx.models.text_encoder(clip)
    with torch.inference_mode():
        cond, pooled = encoder.encode(_pad_chunks(encoder, tokens), layer_idx=clip.layer_idx,
                                      attention_scale=clip.attention_scale)
    return [cond.float().cpu(), {"pooled_output": pooled.float().cpu(), **extras}]


def tokenize_per_tower(ctx: RunContext, clip: ClipHandle, text_for: Callable[[str], str]
                       ) -> dict[str, TokenizedPrompt]:
    """Each text tower's tokens of its own text (``text_for(tower key)``: SDXL's text_l and text_g; SD3's and
    Flux's clip_l, clip_g and t5xxl)."""
    encoder = ctx.models.text_encoder(clip)
    lookup = embedding_lookup(ctx.folders)
    if isinstance(encoder, FlowTextEncoder):
        return {key: encoder.tokenize_tower(key, text_for(key), embedding_lookup=lookup) for key in encoder.towers}
    return {key: _tower(encoder, key).tokenize(text_for(key), embedding_lookup=lookup) for key in encoder.towers}


def _tower(encoder: TextEncoder, key: str) -> ClipTower:
    tower = encoder.towers[key]
    assert isinstance(tower, ClipTower), f"text tower {key} is a {type(tower).__name__}"
    return tower


def _pad_chunks(encoder: TextEncoder, tokens: dict[str, TokenizedPrompt]) -> dict[str, TokenizedPrompt]:
    """Give every CLIP tower the same number of 77-token chunks (the shorter ones get empty chunks); a T5
    sequence (SD3, Flux) is left as it is."""
    chunked = {key for key in tokens if isinstance(encoder.towers[key], ClipTower)}
    longest = max((len(tokens[key].ids) for key in chunked), default=0)
    padded = {}
    for key, prompt in tokens.items():
        missing = longest - len(prompt.ids) if key in chunked else 0
        if missing:
            empty = _tower(encoder, key).tokenizer.empty_chunk()
            prompt = TokenizedPrompt(ids=[*prompt.ids, *[empty] * missing],
                                     weights=[*prompt.weights, *[[1.0] * len(empty)] * missing],
                                     embeddings=prompt.embeddings)
        padded[key] = prompt
    return padded


def to_pixels(decoded: Tensor) -> Tensor:
    """VAE output [B, 3, H, W] in -1..1 -> IMAGE [B, H, W, 3] in 0..1 on the CPU."""
    return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().contiguous()


def from_pixels(image: Tensor, vae: AutoencoderKL | TinyAutoencoder, device: torch.device) -> Tensor:
    """IMAGE [B, H, W, C] -> [B, 3, H', W'] in -1..1, cropped (centred) to a multiple of 8."""
    height, width = image.shape[1] // 8 * 8, image.shape[2] // 8 * 8
    if height == 0 or width == 0:
        raise ValueError(f"the image is {image.shape[2]}x{image.shape[1]}; it must be at least 8x8 pixels")
    top, left = (image.shape[1] - height) // 2, (image.shape[2] - width) // 2
    pixels = image[:, top:top + height, left:left + width, :3]
    return pixels.permute(0, 3, 1, 2).to(device=device, dtype=vae.dtype) * 2.0 - 1.0


def decode(ctx: RunContext, vae: VaeHandle, samples: Tensor) -> Tensor:
    """LATENT samples -> IMAGE with the VAE of ``vae``."""
    model = ctx.models.vae(vae)
    with torch.inference_mode():
        return to_pixels(model.decode(samples.to(ctx.models.device)))


def encode(ctx: RunContext, vae: VaeHandle, pixels: Tensor) -> Tensor:
    """IMAGE -> LATENT samples (float32, CPU) with the VAE of ``vae``."""
    model = ctx.models.vae(vae)
    with torch.inference_mode():
        return model.encode(from_pixels(pixels, model, ctx.models.device)).float().cpu()


def decode_tiled_latent(ctx: RunContext, vae: VaeHandle, samples: Tensor, tile: int, overlap: int) -> Tensor:
    """Decode in overlapping tiles (sizes in latent pixels) with blended seams."""
    model = ctx.models.vae(vae)
    with torch.inference_mode():
        if isinstance(model, TinyAutoencoder):  # TAESD is small: whole, as its tiles would cost the same
            return to_pixels(model.decode(samples.to(ctx.models.device)))
        return to_pixels(decode_tiled(model, samples.to(ctx.models.device), tile, overlap))


def encode_tiled_image(ctx: RunContext, vae: VaeHandle, pixels: Tensor, tile: int, overlap: int) -> Tensor:
    """Encode in overlapping tiles (sizes in image pixels) with blended seams."""
    model = ctx.models.vae(vae)
    with torch.inference_mode():
        if isinstance(model, TinyAutoencoder):
            return model.encode(from_pixels(pixels, model, ctx.models.device)).float().cpu()
        return encode_tiled(model, from_pixels(pixels, model, ctx.models.device), tile, overlap).float().cpu()
