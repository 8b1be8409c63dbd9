"""Torch-backed SDK module: the image, mask and latent arithmetic nodes hand over.

A node imports this module inside ``run`` (``from engine.sdk import imaging``), never at module level,
so registering nodes does not load torch. Everything here is re-exported from pure-torch modules in
:mod:`engine.backend`: IMAGE is float ``[B, H, W, C]`` in 0..1, MASK float ``[B, H, W]``, LATENT a dict
with ``samples`` ``[B, C, H/8, W/8]`` (see each function's docstring).
"""

from __future__ import annotations

from engine.backend.composite import composite_masked
from engine.backend.imaging import (
    batch_images,
    fit_size,
    invert_image,
    scale_image,
    scale_image_by,
    scale_image_to,
    solid_image,
)
from engine.backend.inpaint import (
    crop_for_vae,
    grey_out,
    inpaint_model_pixels,
    outpaint_feather,
    pad_for_outpaint,
    prepare_inpaint_pixels,
)
from engine.backend.latent_batch import batch_latents, latent_from_batch, repeat_latent_batch
from engine.backend.latents import (
    LATENT_SCALE,
    add_latents,
    composite_latent,
    empty_latent,
    match_latent,
    multiply_latent,
    repeat_to_batch,
    upscale_latent,
    upscale_latent_by,
)
from engine.backend.masks import (
    grow_binary_mask,
    grow_mask,
    image_channel,
    invert_mask,
    mask_3d,
    mask_4d,
    mask_to_image,
    solid_mask,
    threshold_mask,
)
from engine.backend.preprocess import canny, canny_image, fit_hint_image, threshold_image
from engine.backend.resample import CROP_METHODS, RESAMPLE_METHODS, center_crop_to_aspect, resize

__all__ = [
    "CROP_METHODS", "LATENT_SCALE", "RESAMPLE_METHODS",
    "add_latents", "batch_images", "batch_latents", "canny", "canny_image", "center_crop_to_aspect",
    "composite_latent", "composite_masked", "crop_for_vae", "empty_latent", "fit_hint_image", "fit_size",
    "grey_out", "grow_binary_mask", "grow_mask", "image_channel", "inpaint_model_pixels", "invert_image",
    "invert_mask", "latent_from_batch", "mask_3d", "mask_4d", "mask_to_image", "match_latent",
    "multiply_latent", "outpaint_feather", "pad_for_outpaint", "prepare_inpaint_pixels", "repeat_latent_batch",
    "repeat_to_batch", "resize", "scale_image", "scale_image_by", "scale_image_to", "solid_image", "solid_mask",
    "threshold_image", "threshold_mask", "upscale_latent", "upscale_latent_by",
]
