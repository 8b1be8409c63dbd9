"""Torch-backed SDK: handles for model parts stored on their own (UNETLoader, CLIPLoader, DualCLIPLoader,
TripleCLIPLoader, DiffusersLoader). A node imports this module inside ``run``.

Each function reads only names and shapes (and, for SD2 UNets, one small tensor), recognises the family
from the part's own keys (engine/models/parts.py) and returns the handles; the model manager loads the
weights when a node needs them. A file of the wrong kind raises :class:`~engine.errors.ModelError` naming
the node, the input and what the file holds.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.errors import ModelError
from engine.models import parts
from engine.models.families import FLOW_FAMILIES, ModelFamily
from engine.models.handles import ClipHandle, FileRef, ModelHandle, TextEncoderFile, VaeHandle
from engine.models.inspection import vae_prefix
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["WEIGHT_DTYPES", "clip_handle", "diffusers_handles", "dual_clip_handle", "triple_clip_handle",
           "unet_handle"]

log = logging.getLogger(__name__)

#: UNETLoader's weight_dtype choices, in ComfyUI's order.
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


def unet_handle(path: Path, where: str, weight_dtype: str = "default", prediction: str | None = None) -> ModelHandle:
    """MODEL for the UNet in the file at ``path`` (bare, prefixed or diffusers keys); ``where`` names the node
    and input in errors ("UNETLoader unet_name")."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelError(f"{where}: weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    try:
        with CheckpointFile(path) as ckpt:
            layout = parts.find_unet_layout(ckpt)
            family = parts.unet_family(ckpt, layout, prediction)
    except UnsupportedModel as exc:
        raise ModelError(f"{where}: {exc}; a UNet file (models/diffusion_models) holds input_blocks.* / "
                         "middle_block.* keys or a diffusers UNet's, or an SD3 joint_blocks.* / Flux double_blocks.* "
                         "transformer") from None
    log.info("%s: %s UNet (%s keys%s)", path.name, family.label, layout.naming,
             f" under {layout.prefix!r}" if layout.prefix else "")
    weights = None if weight_dtype == "default" else weight_dtype
    return ModelHandle(FileRef.of(path), family, unet_layout=layout, weight_dtype=weights)


def _clip(family: str, sources: tuple[TextEncoderFile, ...]) -> ClipHandle:
    if family in FLOW_FAMILIES:  # SD3 / Flux: 16-channel latents, flow prediction
        return ClipHandle(sources[0].file, ModelFamily(family, "flow", 16, 16), sources=sources)
    return ClipHandle(sources[0].file, ModelFamily(family, "eps", 4), sources=sources)


#: CLIPLoader types Loom loads, and DualCLIPLoader's.
SINGLE_CLIP_TYPES = ("stable_diffusion", "sd3")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux")


def _flow_clip(paths: tuple[Path, ...], where: tuple[str, ...], clip_type: str) -> ClipHandle:
    """CLIP for SD3's (any of CLIP-L, CLIP-G, T5-XXL) or Flux's (CLIP-L + T5-XXL) text-encoder files, any order;
    ``clip_type`` sd3, flux or triple (TripleCLIPLoader: all three of SD3's)."""
    try:
        family, sources = parts.flow_clip(paths, where, clip_type)
    except UnsupportedModel as exc:
        raise ModelError(str(exc)) from None
    return _clip(family, sources)


def clip_handle(path: Path, where: str, clip_type: str) -> ClipHandle:
    """CLIP for one text-encoder file: SD1 CLIP-L, SD2 OpenCLIP-H, or OpenCLIP-bigG alone (SDXL refiner); with
    type sd3, one of SD3's CLIP-L, CLIP-G and T5-XXL."""
    if clip_type not in SINGLE_CLIP_TYPES:
        raise ModelError(f"{where.split()[0]} type: {clip_type!r} text encoders are not supported yet; Loom runs "
                         "SD1.x/SD2.x/SDXL and SD3: use type stable_diffusion (CLIP-L for SD1, OpenCLIP-H for SD2) "
                         "or sd3 (CLIP-L, CLIP-G or T5-XXL)")
    if clip_type == "sd3":
        return _flow_clip((path,), (where,), clip_type)
    try:
        family, sources = parts.single_clip(path, where)
    except UnsupportedModel as exc:
        raise ModelError(str(exc)) from None
    return _clip(family, sources)


def dual_clip_handle(first: Path, second: Path, where: tuple[str, str], clip_type: str) -> ClipHandle:
    """CLIP for a pair of text-encoder files, either order: SDXL's CLIP-L and OpenCLIP-bigG; two of SD3's CLIP-L,
    CLIP-G and T5-XXL; Flux's CLIP-L and T5-XXL."""
    if clip_type not in DUAL_CLIP_TYPES:
        raise ModelError(f"{where[0].split()[0]} type: {clip_type!r} text encoders are not supported yet; Loom "
                         "runs SD1.x/SD2.x/SDXL, SD3 and Flux: use type sdxl (CLIP-L + OpenCLIP-bigG), sd3 (two of "
                         "CLIP-L, CLIP-G, T5-XXL) or flux (CLIP-L + T5-XXL)")
    if clip_type in FLOW_FAMILIES:
        return _flow_clip((first, second), where, clip_type)
    try:
        family, sources = parts.dual_clip(first, second, where)
    except UnsupportedModel as exc:
        raise ModelError(f"{where[0].split()[0]}: {exc}") from None
    return _clip(family, sources)


def triple_clip_handle(paths: tuple[Path, Path, Path], where: tuple[str, str, str]) -> ClipHandle:
    """CLIP for SD3's three text-encoder files (TripleCLIPLoader): CLIP-L, CLIP-G and T5-XXL, in any order."""
    return _flow_clip(paths, where, "triple")


def diffusers_handles(folder: Path, where: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
    """MODEL, CLIP and VAE of a diffusers-format folder (unet/, text_encoder/[, text_encoder_2/], vae/)."""
    try:
        found = parts.read_diffusers_folder(folder)
    except UnsupportedModel as exc:
        raise ModelError(f"{where}: {exc}") from None
    model = unet_handle(found.unet, f"{where} (unet/)", prediction=found.prediction)
    encoders = found.text_encoders
    if model.family.is_sdxl and len(encoders) == 2:
        clip = dual_clip_handle(encoders[0], encoders[1], (f"{where} (text_encoder/)", f"{where} (text_encoder_2/)"),
                                "sdxl")
    elif len(encoders) == 1:
        clip = clip_handle(encoders[0], f"{where} (text_encoder/)", "stable_diffusion")
    else:
        raise ModelError(f"{where}: a {model.family.label} UNet with {len(encoders)} text encoders; expected one "
                         "(SD1/SD2) or two (SDXL)")
    if clip.family.name != model.family.name and not model.family.is_sdxl:
        log.warning("%s: the UNet is %s but the text encoder looks like %s", where, model.family.label,
                    clip.family.label)
    try:
        vae = VaeHandle(FileRef.of(found.vae), vae_prefix(found.vae, f"{where} (vae/)"))
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    return model, clip, vae
