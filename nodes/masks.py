"""Mask nodes (ComfyUI's comfy_extras/nodes_mask): make, invert, grow, threshold and convert masks,
and paste an image into another through a mask.

MASK is float [B, H, W] in 0..1 (1 = selected: regenerate when inpainting); IMAGE is [B, H, W, C].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.context import RunContext
from engine.node import Input, Node, Output
from engine.types import BOOLEAN, COMBO, FLOAT, IMAGE, INT, MASK
from nodes.image_ops import MAX_RESOLUTION

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "alpha")
_MODULE = "comfy_extras.nodes_mask"


def mask_3d(mask: Tensor) -> Tensor:
    """A MASK of any accepted rank as float [B, H, W]."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1])).float()


def _neighbourhood(mask: Tensor, tapered: bool) -> Tensor:
    """The 3x3 neighbours of every pixel, [9 or 5, B, H, W]; edges repeat (ComfyUI's reflect mode)."""
    height, width = mask.shape[-2:]
    padded = F.pad(mask[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if not (tapered and dy and dx)]
    return torch.stack([padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] for dy, dx in offsets])


def grow_mask(mask: Tensor, expand: int, tapered_corners: bool) -> Tensor:
    """Grey dilation (``expand`` > 0) or erosion (< 0), one 3x3 pass per pixel of ``expand``.

    With ``tapered_corners`` the footprint is a cross (corners grow rounder), else a full square.
    """
    out = mask_3d(mask)
    for _ in range(abs(expand)):
        around = _neighbourhood(out, tapered_corners)
        out = around.amax(dim=0) if expand > 0 else around.amin(dim=0)
    return out


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
        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask(Node):
    """1 - mask: select what was not selected."""

    python_module = _MODULE
    category = "mask"
    inputs = (Input("mask", MASK),)
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, mask: Tensor) -> tuple[Tensor]:
        return (1.0 - mask_3d(mask),)


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
        return (grow_mask(mask, expand, tapered_corners),)


class ThresholdMask(Node):
    """1 where the mask is above ``value``, else 0."""

    python_module = _MODULE
    category = "mask"
    inputs = (Input("mask", MASK), Input("value", FLOAT, default=0.5, min=0.0, max=1.0, step=0.01))
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, mask: Tensor, value: float) -> tuple[Tensor]:
        return ((mask_3d(mask) > value).float(),)


class MaskToImage(Node):
    """A mask as a grey image (the mask in all three channels)."""

    display_name = "Convert Mask to Image"
    python_module = _MODULE
    category = "mask"
    inputs = (Input("mask", MASK),)
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, mask: Tensor) -> tuple[Tensor]:
        return (mask_3d(mask)[..., None].expand(-1, -1, -1, 3).contiguous(),)


class ImageToMask(Node):
    """One channel of an image as a mask."""

    display_name = "Convert Image to Mask"
    python_module = _MODULE
    category = "mask"
    inputs = (Input("image", IMAGE), Input("channel", COMBO, choices=CHANNELS))
    outputs = (Output(MASK),)

    def run(self, ctx: RunContext, image: Tensor, channel: str) -> tuple[Tensor]:
        index = CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"input 'channel': the image has no {channel} channel ({image.shape[-1]} channels); "
                             "pick red, green or blue")
        return (image[..., index].float().contiguous(),)


def _with_alpha(image: Tensor) -> Tensor:
    return F.pad(image, (0, 1), value=1.0) if image.shape[-1] == 3 else image


def _match_channels(destination: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """Give an RGB image an opaque alpha channel when the other one has alpha."""
    if destination.shape[-1] == source.shape[-1]:
        return destination, source
    return _with_alpha(destination), _with_alpha(source)


def _batch(tensor: Tensor, size: int) -> Tensor:
    if tensor.shape[0] >= size:
        return tensor[:size]
    reps = -(-size // tensor.shape[0])
    return tensor.repeat((reps,) + (1,) * (tensor.ndim - 1))[:size]


def composite_masked(destination: Tensor, source: Tensor, x: int, y: int, mask: Tensor | None,
                     resize_source: bool) -> Tensor:
    """``source`` pasted onto a copy of ``destination`` at (x, y) through ``mask`` (resized to the source)."""
    destination, source = _match_channels(destination, source)
    out = destination.clone().movedim(-1, 1)
    src = source.to(out).movedim(-1, 1)
    if resize_source:
        src = F.interpolate(src, size=out.shape[-2:], mode="bilinear")
    src = _batch(src, out.shape[0])
    if mask is None:
        weight = torch.ones_like(src[:, :1])
    else:
        weight = F.interpolate(mask_3d(mask)[:, None].to(out), size=src.shape[-2:], mode="bilinear")
        weight = _batch(weight, src.shape[0])
    height = max(min(src.shape[-2], out.shape[-2] - y), 0)
    width = max(min(src.shape[-1], out.shape[-1] - x), 0)
    weight, src = weight[..., :height, :width], src[..., :height, :width]
    region = out[..., y:y + height, x:x + width]
    out[..., y:y + height, x:x + width] = src * weight + region * (1.0 - weight)
    return out.movedim(1, -1)


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
        return (composite_masked(destination, source, x, y, mask, resize_source),)


MASK_NODES: tuple[type[Node], ...] = (SolidMask, InvertMask, GrowMask, ThresholdMask, MaskToImage, ImageToMask,
                                      ImageCompositeMasked)
