"""Torch-backed SDK: handles for model parts stored on their own (UNETLoader, CLIPLoader, DualCLIPLoader,
DiffusersLoader). A node imports this module inside ``run``.

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
from engine.models.families import ModelFamily
from engine.models.handles import ClipHandle, FileRef, ModelHandle, TextEncoderFile, VaeHandle
from engine.models.inspection import vae_prefix
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["WEIGHT_DTYPES", "clip_handle", "diffusers_handles", "dual_clip_handle", "unet_handle"]

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
    return ClipHandle(sources[0].file, ModelFamily(family, "eps", 4), sources=sources)


#: CLIPLoader types Loom loads, and DualCLIPLoader's.
SINGLE_CLIP_TYPES = ("stable_diffusion",)
DUAL_CLIP_TYPES = ("sdxl",)


def clip_handle(path: Path, where: str, clip_type: str) -> ClipHandle:
    """CLIP for one text-encoder file: SD1 CLIP-L, SD2 OpenCLIP-H, or OpenCLIP-bigG alone (SDXL refiner)."""
    if clip_type not in SINGLE_CLIP_TYPES:
        raise ModelError(f"{where.split()[0]} type: {clip_type!r} text encoders are not supported yet; Loom runs "
                         "SD1.x/SD2.x/SDXL: use type stable_diffusion (CLIP-L for SD1, OpenCLIP-H for SD2)")
    try:
        family, sources = parts.single_clip(path, where)
    except UnsupportedModel as exc:
        raise ModelError(str(exc)) from None
    return _clip(family, sources)


def dual_clip_handle(first: Path, second: Path, where: tuple[str, str], clip_type: str) -> ClipHandle:
    """CLIP for SDXL's pair of text-encoder files (CLIP-L and OpenCLIP-bigG, either order)."""
    if clip_type not in DUAL_CLIP_TYPES:
        raise ModelError(f"{where[0].split()[0]} type: {clip_type!r} text encoders are not supported yet; Loom "
                         "runs SD1.x/SD2.x/SDXL: use type sdxl with a CLIP-L and an OpenCLIP-bigG file")
    try:
        family, sources = parts.dual_clip(first, second, where)
    except UnsupportedModel as exc:
        raise ModelError(f"{where[0].split()[0]}: {exc}") from None
    return _clip(family, sources)


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
