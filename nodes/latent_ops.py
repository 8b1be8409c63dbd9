"""Latent nodes: empty latents, resizing, compositing, batching and arithmetic.

A LATENT is a dict ``{"samples": [B, C, H/8, W/8], "noise_mask"?: mask, "batch_index"?: [int]}``.
``batch_index`` says which noise of a seeded batch each item gets (ComfyUI's rule), so nodes that
reorder or repeat items keep it consistent. Nodes never mutate the dicts or tensors they receive:
each returns a shallow copy with new tensors for what changed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.context import RunContext
from engine.node import Input, Node, Output
from engine.types import COMBO, FLOAT, INT, LATENT
from nodes.image_ops import CROP_METHODS, MAX_RESOLUTION, resize

Latent = dict[str, Any]

LATENT_UPSCALE_METHODS: tuple[str, ...] = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")

#: Pixels per latent pixel along each axis for the SD VAEs.
LATENT_SCALE = 8

#: Channels of an SD1.x/SD2.x/SDXL latent.
DEFAULT_LATENT_CHANNELS = 4


def empty_latent(width: int, height: int, batch_size: int, channels: int = DEFAULT_LATENT_CHANNELS) -> Latent:
    """Zeros for ``batch_size`` images of ``width x height`` pixels."""
    shape = (batch_size, channels, height // LATENT_SCALE, width // LATENT_SCALE)
    return {"samples": torch.zeros(shape, dtype=torch.float32)}


def repeat_to_batch(x: Tensor, batch: int) -> Tensor:
    """Repeat (cyclically) or cut ``x`` along dim 0 to exactly ``batch`` items."""
    if x.shape[0] == batch:
        return x
    times = math.ceil(batch / x.shape[0])
    return x.repeat((times,) + (1,) * (x.ndim - 1))[:batch]


def match_latent(target: Tensor, other: Tensor, *, repeat_batch: bool) -> Tensor:
    """``other`` resized (bilinear, centre crop) to ``target``'s size, optionally its batch too."""
    if other.shape[1:] != target.shape[1:]:
        if other.shape[1] != target.shape[1]:
            raise ValueError(
                f"latents have {target.shape[1]} and {other.shape[1]} channels; "
                "they come from different model families and cannot be combined"
            )
        other = resize(other, target.shape[-1], target.shape[-2], "bilinear", "center")
    other = other.to(target)
    return repeat_to_batch(other, target.shape[0]) if repeat_batch else other


def _mask_4d(mask: Tensor) -> Tensor:
    """A noise mask as ``[B, 1, H, W]`` (masks arrive as [H, W], [B, H, W] or [B, 1, H, W])."""
    if mask.ndim == 2:
        return mask[None, None]
    if mask.ndim == 3:
        return mask[:, None]
    return mask


def _batch_noise_masks(first: Latent, second: Latent) -> Tensor | None:
    """The noise mask of two latents batched together; a side without one is fully masked (1)."""
    mask1, mask2 = first.get("noise_mask"), second.get("noise_mask")
    if mask1 is None and mask2 is None:
        return None
    batch1, batch2 = first["samples"].shape[0], second["samples"].shape[0]
    reference = _mask_4d(mask1 if mask1 is not None else mask2)
    size = reference.shape[-2:]
    parts = []
    for mask, batch in ((mask1, batch1), (mask2, batch2)):
        if mask is None:
            parts.append(torch.ones((batch, 1, *size), dtype=reference.dtype, device=reference.device))
            continue
        mask = _mask_4d(mask).to(reference)
        if mask.shape[-2:] != size:
            mask = F.interpolate(mask, size=tuple(size), mode="bilinear")
        parts.append(repeat_to_batch(mask, batch))
    return torch.cat(parts, dim=0)


def _indices(latent: Latent) -> list[int]:
    """The latent's batch_index, or 0..B-1 when it has none."""
    index = latent.get("batch_index")
    return list(index) if index is not None else list(range(latent["samples"].shape[0]))


# ---------------------------------------------------------------------------------------------
# Nodes


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
        return (empty_latent(width, height, batch_size, self.latent_channels),)


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
        out = dict(samples)
        if width == 0 and height == 0:
            return (out,)
        latent = samples["samples"]
        min_size = 8 * LATENT_SCALE  # ComfyUI never goes below 64 pixels
        if width == 0:
            height = max(min_size, height)
            width = max(min_size, round(latent.shape[-1] * height / latent.shape[-2]))
        elif height == 0:
            width = max(min_size, width)
            height = max(min_size, round(latent.shape[-2] * width / latent.shape[-1]))
        else:
            width, height = max(min_size, width), max(min_size, height)
        out["samples"] = resize(latent, width // LATENT_SCALE, height // LATENT_SCALE, upscale_method, crop)
        return (out,)


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
        latent = samples["samples"]
        width = max(1, round(latent.shape[-1] * scale_by))
        height = max(1, round(latent.shape[-2] * scale_by))
        out = dict(samples)
        out["samples"] = resize(latent, width, height, upscale_method)
        return (out,)


def _feather_weights(length: int, feather: int, ramp_start: bool, ramp_end: bool) -> Tensor:
    """Per-row (or column) weights: 1 inside, a linear ramp of ``feather`` steps at inner edges."""
    weights = torch.ones(length, dtype=torch.float32)
    steps = min(feather, length)
    if feather <= 0 or steps == 0:
        return weights
    ramp = (torch.arange(steps, dtype=torch.float32) + 1.0) / feather
    if ramp_start:
        weights[:steps] *= ramp
    if ramp_end:
        weights[length - steps :] *= ramp.flip(0)
    return weights


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
        x, y, feather = x // LATENT_SCALE, y // LATENT_SCALE, feather // LATENT_SCALE
        dest = samples_to["samples"]
        out = dict(samples_to)
        result = dest.clone()
        out["samples"] = result
        height = max(0, min(samples_from["samples"].shape[-2], dest.shape[-2] - y))
        width = max(0, min(samples_from["samples"].shape[-1], dest.shape[-1] - x))
        if height == 0 or width == 0:
            return (out,)
        source = samples_from["samples"][..., :height, :width].to(dest)
        source = repeat_to_batch(source, dest.shape[0])
        if feather == 0:
            result[..., y : y + height, x : x + width] = source
            return (out,)
        rows = _feather_weights(height, feather, y != 0, y + height < dest.shape[-2])
        cols = _feather_weights(width, feather, x != 0, x + width < dest.shape[-1])
        weight = (rows[:, None] * cols[None, :]).to(dest)
        region = result[..., y : y + height, x : x + width]
        result[..., y : y + height, x : x + width] = source * weight + region * (1.0 - weight)
        return (out,)


class LatentBatch(Node):
    """Join two latent batches; samples2 is resized to samples1's size when they differ."""

    display_name = "Latent Batch"
    category = "latent/batch"
    inputs = (Input("samples1", LATENT), Input("samples2", LATENT))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        first = samples1["samples"]
        second = match_latent(first, samples2["samples"], repeat_batch=False)
        out = dict(samples1)
        out["samples"] = torch.cat((first, second), dim=0)
        # ComfyUI concatenates the indices as they are, so a seed gives the same noise here.
        out["batch_index"] = _indices(samples1) + _indices(samples2)
        mask = _batch_noise_masks(samples1, samples2)
        if mask is not None:
            out["noise_mask"] = mask
        return (out,)


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
        latent = samples["samples"]
        batch = latent.shape[0]
        start = min(batch - 1, batch_index)
        stop = start + min(batch - start, length)
        out = dict(samples)
        out["samples"] = latent[start:stop].clone()
        mask = samples.get("noise_mask")
        if mask is not None:
            if mask.ndim >= 3 and mask.shape[0] > 1:
                out["noise_mask"] = repeat_to_batch(mask, batch)[start:stop].clone()
            else:
                out["noise_mask"] = mask.clone()
        out["batch_index"] = _indices(samples)[start:stop]
        return (out,)


class RepeatLatentBatch(Node):
    """Repeat a latent batch ``amount`` times; each copy gets its own noise indices."""

    display_name = "Repeat Latent Batch"
    category = "latent/batch"
    inputs = (Input("samples", LATENT), Input("amount", INT, default=1, min=1, max=64))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, amount: int) -> tuple[Latent]:
        latent = samples["samples"]
        out = dict(samples)
        out["samples"] = latent.repeat((amount,) + (1,) * (latent.ndim - 1))
        mask = samples.get("noise_mask")
        if mask is not None and mask.ndim >= 3 and mask.shape[0] > 1:
            mask = repeat_to_batch(mask, latent.shape[0])
            out["noise_mask"] = mask.repeat((amount,) + (1,) * (mask.ndim - 1))
        index = samples.get("batch_index")
        if index is not None:
            index = list(index)
            # ComfyUI's rule: each copy is offset by the span of the indices.
            offset = max(index) - min(index) + 1
            out["batch_index"] = [i + copy * offset for copy in range(amount) for i in index]
        return (out,)


class LatentAdd(Node):
    """samples1 + samples2 (samples2 resized and repeated to samples1's shape if needed)."""

    category = "latent/advanced"
    inputs = (Input("samples1", LATENT), Input("samples2", LATENT))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        first = samples1["samples"]
        out = dict(samples1)
        out["samples"] = first + match_latent(first, samples2["samples"], repeat_batch=True)
        return (out,)


class LatentMultiply(Node):
    """samples x multiplier."""

    category = "latent/advanced"
    inputs = (
        Input("samples", LATENT),
        Input("multiplier", FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, multiplier: float) -> tuple[Latent]:
        out = dict(samples)
        out["samples"] = samples["samples"] * multiplier
        return (out,)


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
