"""Latent transform nodes: rotate, flip, crop, blend, subtract, interpolate, concatenate, cut, the batch
seed behaviour, rebatching and masked compositing (ComfyUI's core latent nodes of the same names).

The tensor work lives in :mod:`engine.sdk.latent_edit`, which never mutates what it receives. As in
ComfyUI, a transformed latent keeps the ``noise_mask`` and ``batch_index`` of its (first) input.
"""

from __future__ import annotations

from typing import Any

from engine.sdk import BOOLEAN, COMBO, FLOAT, INT, LATENT, MASK, Input, Node, Output, RunContext
from nodes.image_ops import MAX_RESOLUTION

Latent = dict[str, Any]

ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")
FLIP_METHODS = ("x-axis: vertically", "y-axis: horizontally")
CONCAT_DIMS = ("x", "-x", "y", "-y", "t", "-t")
CUT_DIMS = ("x", "y", "t")
SEED_BEHAVIORS = ("random", "fixed")


def _two_latents() -> tuple[Input, Input]:
    return Input("samples1", LATENT), Input("samples2", LATENT)


class LatentRotate(Node):
    """Rotate latents clockwise by a multiple of 90 degrees."""

    display_name = "Rotate Latent"
    category = "latent/transform"
    inputs = (Input("samples", LATENT), Input("rotation", COMBO, choices=ROTATIONS))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, rotation: str) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.rotate_latent(samples, rotation),)


class LatentFlip(Node):
    """Mirror latents top-bottom (x-axis) or left-right (y-axis)."""

    display_name = "Flip Latent"
    category = "latent/transform"
    inputs = (Input("samples", LATENT), Input("flip_method", COMBO, choices=FLIP_METHODS))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, flip_method: str) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.flip_latent(samples, flip_method),)


class LatentCrop(Node):
    """Cut a region (in pixels) out of latents."""

    display_name = "Crop Latent"
    category = "latent/transform"
    inputs = (
        Input("samples", LATENT),
        Input("width", INT, default=512, min=64, max=MAX_RESOLUTION, step=8),
        Input("height", INT, default=512, min=64, max=MAX_RESOLUTION, step=8),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, width: int, height: int, x: int, y: int) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.crop_latent(samples, width, height, x, y),)


class LatentBlend(Node):
    """samples1 x blend_factor + samples2 x (1 - blend_factor); samples2 is resized to samples1 if needed."""

    display_name = "Latent Blend"
    category = "_for_testing"
    inputs = (*_two_latents(), Input("blend_factor", FLOAT, default=0.5, min=0, max=1, step=0.01))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples1: Latent, samples2: Latent, blend_factor: float) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.blend_latents(samples1, samples2, blend_factor),)


class LatentSubtract(Node):
    """samples1 - samples2 (samples2 resized and repeated to samples1's shape if needed)."""

    category = "latent/advanced"
    inputs = _two_latents()
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.subtract_latents(samples1, samples2),)


class LatentInterpolate(Node):
    """Mix two latents per pixel, keeping vector lengths: ratio 1 gives samples1, 0 gives samples2."""

    category = "latent/advanced"
    inputs = (*_two_latents(), Input("ratio", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples1: Latent, samples2: Latent, ratio: float) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.interpolate_latents(samples1, samples2, ratio),)


class LatentConcat(Node):
    """Join two latents side by side (x), one above the other (y) or along t; "-" puts samples2 first."""

    category = "latent/advanced"
    inputs = (*_two_latents(), Input("dim", COMBO, choices=CONCAT_DIMS))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples1: Latent, samples2: Latent, dim: str) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.concat_latents(samples1, samples2, dim),)


class LatentCut(Node):
    """Keep ``amount`` latent pixels along x, y or t from ``index`` (negative counts from the end)."""

    category = "latent/advanced"
    inputs = (
        Input("samples", LATENT),
        Input("dim", COMBO, choices=CUT_DIMS),
        Input("index", INT, default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
        Input("amount", INT, default=1, min=1, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, dim: str, index: int, amount: int) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.cut_latent(samples, dim, index, amount),)


class LatentBatchSeedBehavior(Node):
    """Seed a batch with one noise per item ("random") or the first item's noise for all ("fixed")."""

    category = "latent/advanced"
    inputs = (Input("samples", LATENT), Input("seed_behavior", COMBO, choices=SEED_BEHAVIORS, default="fixed"))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, seed_behavior: str) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.seed_behavior(samples, seed_behavior),)


class RebatchLatents(Node):
    """Re-cut a list of latent batches into batches of ``batch_size`` (a size change starts a new batch)."""

    display_name = "Rebatch Latents"
    category = "latent/batch"
    input_is_list = True
    inputs = (Input("latents", LATENT), Input("batch_size", INT, default=1, min=1, max=4096))
    outputs = (Output(LATENT, is_list=True),)

    def run(self, ctx: RunContext, latents: list[Latent], batch_size: list[int]) -> tuple[list[Latent]]:
        from engine.sdk import latent_edit

        return (latent_edit.rebatch_latents(latents, batch_size[0]),)


class LatentCompositeMasked(Node):
    """Paste source into destination at (x, y) pixels through an optional mask (1 = source)."""

    display_name = "Latent Composite Masked"
    category = "latent"
    inputs = (
        Input("destination", LATENT),
        Input("source", LATENT),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("resize_source", BOOLEAN, default=False),
        Input("mask", MASK, optional=True),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, destination: Latent, source: Latent, x: int, y: int, resize_source: bool,
            mask: Any = None) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.composite_latent_masked(destination, source, x, y, resize_source, mask),)


LATENT_TRANSFORM_NODES: tuple[type[Node], ...] = (
    LatentRotate,
    LatentFlip,
    LatentCrop,
    LatentBlend,
    LatentSubtract,
    LatentInterpolate,
    LatentConcat,
    LatentCut,
    LatentBatchSeedBehavior,
    RebatchLatents,
    LatentCompositeMasked,
)
