"""Alpha compositing nodes (ComfyUI's comfy_extras/nodes_compositing): Porter-Duff operators over images
with transparency masks, and splitting / joining an image's alpha channel.

Transparency travels as a MASK that is 1 where the pixel is transparent (what LoadImage gives). The
tensor work lives in :mod:`engine.sdk.compositing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.sdk import COMBO, IMAGE, MASK, Input, Node, Output, RunContext

if TYPE_CHECKING:
    from torch import Tensor

_MODULE = "comfy_extras.nodes_compositing"
_CATEGORY = "mask/compositing"

#: ComfyUI's Porter-Duff modes, in its order (engine.backend.porter_duff implements each).
PORTER_DUFF_MODES: tuple[str, ...] = (
    "ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN", "MULTIPLY",
    "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR",
)


class PorterDuffImageComposite(Node):
    """Composite ``source`` with ``destination`` by a Porter-Duff operator, through their alpha masks."""

    display_name = "Porter-Duff Image Composite"
    python_module = _MODULE
    category = _CATEGORY
    inputs = (
        Input("source", IMAGE),
        Input("source_alpha", MASK),
        Input("destination", IMAGE),
        Input("destination_alpha", MASK),
        Input("mode", COMBO, choices=PORTER_DUFF_MODES, default="DST"),
    )
    outputs = (Output(IMAGE), Output(MASK))

    def run(self, ctx: RunContext, source: Tensor, source_alpha: Tensor, destination: Tensor,
            destination_alpha: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        from engine.sdk import compositing

        return compositing.porter_duff_composite(source, source_alpha, destination, destination_alpha, mode)


class SplitImageWithAlpha(Node):
    """An RGBA image as its RGB and a mask of its transparency (1 - alpha)."""

    display_name = "Split Image with Alpha"
    python_module = _MODULE
    category = _CATEGORY
    inputs = (Input("image", IMAGE),)
    outputs = (Output(IMAGE), Output(MASK))

    def run(self, ctx: RunContext, image: Tensor) -> tuple[Tensor, Tensor]:
        from engine.sdk import compositing

        return compositing.split_image_with_alpha(image)


class JoinImageWithAlpha(Node):
    """An RGBA image: the image's RGB with ``1 - alpha`` (a transparency mask, resized to fit) as alpha."""

    display_name = "Join Image with Alpha"
    python_module = _MODULE
    category = _CATEGORY
    inputs = (Input("image", IMAGE), Input("alpha", MASK))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, alpha: Tensor) -> tuple[Tensor]:
        from engine.sdk import compositing

        return (compositing.join_image_with_alpha(image, alpha),)


COMPOSITING_NODES: tuple[type[Node], ...] = (PorterDuffImageComposite, SplitImageWithAlpha, JoinImageWithAlpha)
