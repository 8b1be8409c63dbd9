"""Torch-backed SDK module: latent transforms and LATENT_OPERATION values.

A node imports this module inside ``run`` (``from engine.sdk import latent_edit``), never at module
level, so registering nodes does not load torch. Everything here is re-exported from pure-torch modules
in :mod:`engine.backend`: rotating, flipping, cropping, blending, interpolating, concatenating and
cutting latents, the batch seed behaviour, masked compositing, rebatching a list of latents, and the
latent operations (Reinhard tone mapping, sharpening) with :func:`apply_operation`.
"""

from __future__ import annotations

from engine.backend.latent_operations import LatentOperation, Sharpen, TonemapReinhard, apply_operation
from engine.backend.latent_rebatch import rebatch_latents
from engine.backend.latent_transform import (
    blend_latents,
    composite_latent_masked,
    concat_latents,
    crop_latent,
    cut_latent,
    flip_latent,
    interpolate_latents,
    rotate_latent,
    seed_behavior,
    subtract_latents,
)

__all__ = [
    "LatentOperation", "Sharpen", "TonemapReinhard", "apply_operation", "blend_latents", "composite_latent_masked",
    "concat_latents", "crop_latent", "cut_latent", "flip_latent", "interpolate_latents", "rebatch_latents",
    "rotate_latent", "seed_behavior", "subtract_latents",
]
