"""Mask nodes (ComfyUI's comfy_extras/nodes_mask): make, invert, grow, threshold, feather, crop, combine,
convert and preview masks, and paste an image into another through a mask. The tensor work lives in
:mod:`engine.sdk.imaging` and :mod:`engine.sdk.compositing`.

MASK is float [B, H, W] in 0..1 (1 = selected: regenerate when inpainting); IMAGE is [B, H, W, C].
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from engine.sdk import BOOLEAN, COMBO, FLOAT, IMAGE, INT, MASK, Input, Node, NodeOutput, Output, RunContext
from nodes.image_io import save_images
from nodes.image_ops import MAX_RESOLUTION

if TYPE_CHECKING:
    from torch import Tensor

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "alpha")
_MODULE = "comfy_extras.nodes_mask"


class SolidMask(Node):
    """A mask of one value everywhere."""

    python_module = _MODULE
    category = "mask"
    inputs = (
        Input("value", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
        Input("width", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("height", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, value: float, width: int, height: int) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.solid_mask(value, width, height),)


class InvertMask(Node):
    """1 - mask: select what was not selected."""

    python_module = _MODULE
    category = "mask"
    inputs = (Input("mask", MASK),)
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, mask: Tensor) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.invert_mask(mask),)


class GrowMask(Node):
    """Grow (or, with a negative expand, shrink) a mask by whole pixels."""

    python_module = _MODULE
    category = "mask"
    inputs = (
        Input("mask", MASK),
        Input("expand", INT, default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
        Input("tapered_corners", BOOLEAN, default=True),
    )
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, mask: Tensor, expand: int, tapered_corners: bool) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.grow_mask(mask, expand, tapered_corners),)


class ThresholdMask(Node):
    """1 where the mask is above ``value``, else 0."""

    python_module = _MODULE
    category = "mask"
    inputs = (Input("mask", MASK), Input("value", FLOAT, default=0.5, min=0.0, max=1.0, step=0.01))
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, mask: Tensor, value: float) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.threshold_mask(mask, value),)


class MaskToImage(Node):
    """A mask as a grey image (the mask in all three channels)."""

    display_name = "Convert Mask to Image"
    python_module = _MODULE
    category = "mask"
    inputs = (Input("mask", MASK),)
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, mask: Tensor) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.mask_to_image(mask),)


class ImageToMask(Node):
    """One channel of an image as a mask."""

    display_name = "Convert Image to Mask"
    python_module = _MODULE
    category = "mask"
    inputs = (Input("image", IMAGE), Input("channel", COMBO, choices=CHANNELS))
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, image: Tensor, channel: str) -> tuple[Tensor]:
        from engine.sdk import imaging

        index = CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"input 'channel': the image has no {channel} channel ({image.shape[-1]} channels); "
                             "pick red, green or blue")
        return (imaging.image_channel(image, index),)


class ImageCompositeMasked(Node):
    """Paste ``source`` onto ``destination`` at (x, y), through an optional mask."""

    python_module = _MODULE
    category = "image"
    inputs = (
        Input("destination", IMAGE),
        Input("source", IMAGE),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("resize_source", BOOLEAN, default=False),
        Input("mask", MASK, optional=True),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, destination: Tensor, source: Tensor, x: int, y: int, resize_source: bool,
            mask: Tensor | None = None) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.composite_masked(destination, source, x, y, mask, resize_source),)


#: MaskComposite's operations, in ComfyUI's order (engine.backend.mask_ops implements each).
MASK_OPERATIONS: tuple[str, ...] = ("multiply", "add", "subtract", "and", "or", "xor")


def _edge(name: str) -> Input:
    return Input(name, INT, default=0, min=0, max=MAX_RESOLUTION, step=1)


class FeatherMask(Node):
    """Fade a mask linearly to its edges over the given number of pixels on each side."""

    display_name = "Feather Mask"
    python_module = _MODULE
    category = "mask"
    inputs = (Input("mask", MASK), _edge("left"), _edge("top"), _edge("right"), _edge("bottom"))
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, mask: Tensor, left: int, top: int, right: int, bottom: int) -> tuple[Tensor]:
        from engine.sdk import compositing

        return (compositing.feather_mask(mask, left, top, right, bottom),)


class MaskComposite(Node):
    """Combine ``source`` into ``destination`` at (x, y) by an operation; the result is clamped to 0..1."""

    display_name = "Mask Composite"
    python_module = _MODULE
    category = "mask"
    inputs = (
        Input("destination", MASK),
        Input("source", MASK),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("operation", COMBO, choices=MASK_OPERATIONS),
    )
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, destination: Tensor, source: Tensor, x: int, y: int,
            operation: str) -> tuple[Tensor]:
        from engine.sdk import compositing

        return (compositing.mask_composite(destination, source, x, y, operation),)


class CropMask(Node):
    """The ``width x height`` part of a mask whose top-left corner is (x, y)."""

    display_name = "Crop Mask"
    python_module = _MODULE
    category = "mask"
    inputs = (
        Input("mask", MASK),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("width", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("height", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, mask: Tensor, x: int, y: int, width: int, height: int) -> tuple[Tensor]:
        from engine.sdk import compositing

        try:
            return (compositing.crop_mask(mask, x, y, width, height),)
        except ValueError as exc:
            raise ValueError(f"inputs 'x'/'y': {exc}") from exc


class ImageColorToMask(Node):
    """1 where a pixel's 8-bit colour is exactly ``color`` (0xRRGGBB), else 0."""

    display_name = "Image Color to Mask"
    python_module = _MODULE
    category = "mask"
    inputs = (
        Input("image", IMAGE),
        Input("color", INT, default=0, min=0, max=0xFFFFFF, step=1, extra={"display": "number"},
              tooltip="The RGB colour as one number, 0xRRGGBB (0 is black, 16777215 white)."),
    )
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, image: Tensor, color: int) -> tuple[Tensor]:
        from engine.sdk import compositing

        try:
            return (compositing.color_to_mask(image, color),)
        except ValueError as exc:
            raise ValueError(f"input 'image': {exc}") from exc


class MaskPreview(Node):
    """Show a mask in the editor as a grey image (saved to the temp folder)."""

    display_name = "Preview Mask"
    python_module = _MODULE
    category = "mask"
    output_node = True
    outputs = ()
    inputs = (Input("mask", MASK),)

    def run(self, ctx: RunContext, mask: Tensor) -> NodeOutput:
        from engine.sdk import imaging

        suffix = "".join(random.choices("abcdefghijklmnopqrstuvwxyz", k=5))
        saved = save_images(ctx, imaging.mask_to_image(mask), f"LoomPreview_{suffix}", "temp", compress_level=1)
        return NodeOutput(values=(), ui={"images": saved, "animated": [False]})


MASK_NODES: tuple[type[Node], ...] = (SolidMask, InvertMask, GrowMask, ThresholdMask, MaskToImage, ImageToMask,
                                      ImageCompositeMasked, FeatherMask, MaskComposite, CropMask, ImageColorToMask,
                                      MaskPreview)
