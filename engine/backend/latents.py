"""LATENT arithmetic: empty latents, resizing, compositing, adding and scaling.

A LATENT is a dict ``{"samples": [B, C, H/8, W/8], "noise_mask"?: mask, "batch_index"?: [int]}``.
Functions never mutate the dicts or tensors they receive: each returns a shallow copy with new
tensors for what changed. Sizes and offsets in arguments are in pixels, as on the nodes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from engine.backend.resample import resize

__all__ = ["LATENT_SCALE", "Latent", "add_latents", "composite_latent", "empty_latent", "match_latent",
           "multiply_latent", "repeat_to_batch", "upscale_latent", "upscale_latent_by"]

Latent = dict[str, Any]

#: Pixels per latent pixel along each axis for the SD VAEs.
LATENT_SCALE = 8
#: ComfyUI never upscales a latent below 64 pixels a side.
_MIN_UPSCALE_PIXELS = 8 * LATENT_SCALE


def empty_latent(width: int, height: int, batch_size: int, channels: int) -> Latent:
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


def _upscale_size(latent: Tensor, width: int, height: int) -> tuple[int, int]:
    """Target pixel size: a 0 side follows the aspect ratio; neither side below 64 pixels."""
    floor = _MIN_UPSCALE_PIXELS
    if width == 0:
        height = max(floor, height)
        return max(floor, round(latent.shape[-1] * height / latent.shape[-2])), height
    if height == 0:
        width = max(floor, width)
        return width, max(floor, round(latent.shape[-2] * width / latent.shape[-1]))
    return max(floor, width), max(floor, height)


def upscale_latent(samples: Latent, method: str, width: int, height: int, crop: str) -> Latent:
    """Resize to ``width x height`` pixels (0 in one keeps the aspect ratio; 0 in both changes nothing)."""
    out = dict(samples)
    if width == 0 and height == 0:
        return out
    latent = samples["samples"]
    width, height = _upscale_size(latent, width, height)
    out["samples"] = resize(latent, width // LATENT_SCALE, height // LATENT_SCALE, method, crop)
    return out


def upscale_latent_by(samples: Latent, method: str, factor: float) -> Latent:
    """Resize by ``factor`` (each side rounded, at least one latent pixel)."""
    latent = samples["samples"]
    width = max(1, round(latent.shape[-1] * factor))
    height = max(1, round(latent.shape[-2] * factor))
    out = dict(samples)
    out["samples"] = resize(latent, width, height, method)
    return out


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


def composite_latent(samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int) -> Latent:
    """``samples_from`` pasted into a copy of ``samples_to`` at (x, y) pixels, edges feathered over
    ``feather`` pixels where they lie inside the destination."""
    x, y, feather = x // LATENT_SCALE, y // LATENT_SCALE, feather // LATENT_SCALE
    dest = samples_to["samples"]
    out = dict(samples_to)
    result = dest.clone()
    out["samples"] = result
    height = max(0, min(samples_from["samples"].shape[-2], dest.shape[-2] - y))
    width = max(0, min(samples_from["samples"].shape[-1], dest.shape[-1] - x))
    if height == 0 or width == 0:
        return out
    source = repeat_to_batch(samples_from["samples"][..., :height, :width].to(dest), dest.shape[0])
    if feather == 0:
        result[..., y : y + height, x : x + width] = source
        return out
    rows = _feather_weights(height, feather, y != 0, y + height < dest.shape[-2])
    cols = _feather_weights(width, feather, x != 0, x + width < dest.shape[-1])
    weight = (rows[:, None] * cols[None, :]).to(dest)
    region = result[..., y : y + height, x : x + width]
    result[..., y : y + height, x : x + width] = source * weight + region * (1.0 - weight)
    return out


def add_latents(first: Latent, second: Latent) -> Latent:
    """``first + second``; ``second`` is resized and repeated to ``first``'s shape when they differ."""
    samples = first["samples"]
    out = dict(first)
    out["samples"] = samples + match_latent(samples, second["samples"], repeat_batch=True)
    return out


def multiply_latent(samples: Latent, multiplier: float) -> Latent:
    """``samples x multiplier``."""
    out = dict(samples)
    out["samples"] = samples["samples"] * multiplier
    return out
