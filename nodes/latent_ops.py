"""Latent nodes: empty latents, resizing, compositing, batching and arithmetic.

A LATENT is a dict ``{"samples": [B, C, H/8, W/8], "noise_mask"?: mask, "batch_index"?: [int]}``.
The tensor work lives in :mod:`engine.sdk.imaging`, which never mutates the dicts or tensors it
receives and keeps ``batch_index`` (which noise of a seeded batch each item gets) consistent.
"""

from __future__ import annotations

from typing import Any

from engine.sdk import COMBO, FLOAT, INT, LATENT, Input, Node, Output, RunContext
from nodes.image_ops import CROP_METHODS, MAX_RESOLUTION

Latent = dict[str, Any]

LATENT_UPSCALE_METHODS: tuple[str, ...] = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")

#: Channels of an SD1.x/SD2.x/SDXL latent.
DEFAULT_LATENT_CHANNELS = 4


class EmptyLatentImage(Node):
    """A batch of empty (zero) latents to sample from, sized in pixels."""

    display_name = "Empty Latent Image"
    category = "latent"
    #: Latent channels produced; a model-aware subclass can change it.
    latent_channels: int = DEFAULT_LATENT_CHANNELS
    inputs = (
        Input("width", INT, default=512, min=16, max=MAX_RESOLUTION, step=8),
        Input("height", INT, default=512, min=16, max=MAX_RESOLUTION, step=8),
        Input("batch_size", INT, default=1, min=1, max=4096),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, width: int, height: int, batch_size: int) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.empty_latent(width, height, batch_size, self.latent_channels),)


def _method_input() -> Input:
    return Input("upscale_method", COMBO, choices=LATENT_UPSCALE_METHODS, default="nearest-exact")


class LatentUpscale(Node):
    """Resize latents to a size in pixels; 0 in width or height keeps the aspect ratio."""

    display_name = "Upscale Latent"
    category = "latent"
    inputs = (
        Input("samples", LATENT),
        _method_input(),
        Input("width", INT, default=512, min=0, max=MAX_RESOLUTION, step=8),
        Input("height", INT, default=512, min=0, max=MAX_RESOLUTION, step=8),
        Input("crop", COMBO, choices=CROP_METHODS, default="disabled"),
    )
    outputs = (Output(LATENT),)

    def run(
        self, ctx: RunContext, samples: Latent, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.upscale_latent(samples, upscale_method, width, height, crop),)


class LatentUpscaleBy(Node):
    """Resize latents by a factor."""

    display_name = "Upscale Latent By"
    category = "latent"
    inputs = (
        Input("samples", LATENT),
        _method_input(),
        Input("scale_by", FLOAT, default=1.5, min=0.01, max=8.0, step=0.01),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.upscale_latent_by(samples, upscale_method, scale_by),)


class LatentComposite(Node):
    """Paste samples_from into samples_to at (x, y) pixels, optionally with feathered edges."""

    display_name = "Latent Composite"
    category = "latent"
    inputs = (
        Input("samples_to", LATENT),
        Input("samples_from", LATENT),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("feather", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
    )
    outputs = (Output(LATENT),)

    def run(
        self, ctx: RunContext, samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int
    ) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.composite_latent(samples_to, samples_from, x, y, feather),)


class LatentBatch(Node):
    """Join two latent batches; samples2 is resized to samples1's size when they differ."""

    display_name = "Latent Batch"
    category = "latent/batch"
    inputs = (Input("samples1", LATENT), Input("samples2", LATENT))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.batch_latents(samples1, samples2),)


class LatentFromBatch(Node):
    """Take ``length`` latents starting at ``batch_index`` out of a batch."""

    display_name = "Latent From Batch"
    category = "latent/batch"
    inputs = (
        Input("samples", LATENT),
        Input("batch_index", INT, default=0, min=0, max=63),
        Input("length", INT, default=1, min=1, max=64),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.latent_from_batch(samples, batch_index, length),)


class RepeatLatentBatch(Node):
    """Repeat a latent batch ``amount`` times; each copy gets its own noise indices."""

    display_name = "Repeat Latent Batch"
    category = "latent/batch"
    inputs = (Input("samples", LATENT), Input("amount", INT, default=1, min=1, max=64))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, amount: int) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.repeat_latent_batch(samples, amount),)


class LatentAdd(Node):
    """samples1 + samples2 (samples2 resized and repeated to samples1's shape if needed)."""

    category = "latent/advanced"
    inputs = (Input("samples1", LATENT), Input("samples2", LATENT))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.add_latents(samples1, samples2),)


class LatentMultiply(Node):
    """samples x multiplier."""

    category = "latent/advanced"
    inputs = (
        Input("samples", LATENT),
        Input("multiplier", FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, multiplier: float) -> tuple[Latent]:
        from engine.sdk import imaging

        return (imaging.multiply_latent(samples, multiplier),)


LATENT_NODES: tuple[type[Node], ...] = (
    EmptyLatentImage,
    LatentUpscale,
    LatentUpscaleBy,
    LatentComposite,
    LatentBatch,
    LatentFromBatch,
    RepeatLatentBatch,
    LatentAdd,
    LatentMultiply,
)
