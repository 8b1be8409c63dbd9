"""LATENT transforms: rotating, flipping, cropping, blending, interpolating, concatenating, cutting,
the batch seed behaviour and masked compositing (ComfyUI's latent transform nodes).

A LATENT is a dict ``{"samples": [B, C, h, w], "noise_mask"?: mask, "batch_index"?: [int]}``. Every
function returns a shallow copy of the first latent with new ``samples``; nothing received is mutated.
As in ComfyUI, ``noise_mask`` and ``batch_index`` are carried over unchanged (geometric transforms do
not move the mask). Sizes and offsets in arguments are in image pixels where the node says pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.backend.composite import composite_masked
from engine.backend.latents import LATENT_SCALE, Latent, match_latent, repeat_to_batch
from engine.backend.resample import resize

__all__ = [
    "CONCAT_DIMS", "CUT_DIMS", "FLIP_METHODS", "ROTATIONS", "SEED_BEHAVIORS",
    "blend_latents", "composite_latent_masked", "concat_latents", "crop_latent", "cut_latent", "flip_latent",
    "interpolate_latents", "rotate_latent", "seed_behavior", "subtract_latents",
]

#: LatentRotate's choices; the index is the number of clockwise quarter turns.
ROTATIONS: tuple[str, ...] = ("none", "90 degrees", "180 degrees", "270 degrees")
#: LatentFlip's choices: "x-axis" mirrors top and bottom, "y-axis" left and right.
FLIP_METHODS: tuple[str, ...] = ("x-axis: vertically", "y-axis: horizontally")
#: LatentConcat's choices: the axis (x = width, y = height, t = the dim before them) and, with "-",
#: samples2 first.
CONCAT_DIMS: tuple[str, ...] = ("x", "-x", "y", "-y", "t", "-t")
#: LatentCut's choices.
CUT_DIMS: tuple[str, ...] = ("x", "y", "t")
#: LatentBatchSeedBehavior's choices.
SEED_BEHAVIORS: tuple[str, ...] = ("random", "fixed")
#: A crop never starts closer than this many latent pixels (64 image pixels) to the far edge.
_MIN_CROP = 8
_AXES = {"x": -1, "y": -2, "t": -3}


def _with_samples(latent: Latent, samples: Tensor) -> Latent:
    out = dict(latent)
    out["samples"] = samples
    return out


def _choice(value: str, choices: tuple[str, ...], what: str) -> int:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
    return choices.index(value)


def rotate_latent(latent: Latent, rotation: str) -> Latent:
    """Rotated clockwise by 0, 90, 180 or 270 degrees (a quarter turn swaps height and width)."""
    turns = _choice(rotation, ROTATIONS, "rotation")
    return _with_samples(latent, torch.rot90(latent["samples"], k=turns, dims=(-1, -2)))


def flip_latent(latent: Latent, flip_method: str) -> Latent:
    """Mirrored top-bottom ("x-axis: vertically") or left-right ("y-axis: horizontally")."""
    axis = (-2, -1)[_choice(flip_method, FLIP_METHODS, "flip method")]
    return _with_samples(latent, torch.flip(latent["samples"], dims=(axis,)))


def crop_latent(latent: Latent, width: int, height: int, x: int, y: int) -> Latent:
    """The ``width x height`` pixel region at (x, y) pixels, cut at the latent's edges.

    As in ComfyUI the start is pulled back so that at least 64 pixels (8 latent pixels) remain after
    it; Loom also keeps it at or after 0 for latents smaller than that.
    """
    samples = latent["samples"]
    left = max(0, min(x // LATENT_SCALE, samples.shape[-1] - _MIN_CROP))
    top = max(0, min(y // LATENT_SCALE, samples.shape[-2] - _MIN_CROP))
    region = samples[..., top:top + height // LATENT_SCALE, left:left + width // LATENT_SCALE]
    return _with_samples(latent, region)


def _broadcast_batch(first: Tensor, second: Tensor, node: str) -> None:
    if first.shape[0] != second.shape[0] and 1 not in (first.shape[0], second.shape[0]):
        raise ValueError(f"{node}: the latents hold {first.shape[0]} and {second.shape[0]} items; batches "
                         "must be the same size, or one of them a single latent")


def blend_latents(samples1: Latent, samples2: Latent, blend_factor: float) -> Latent:
    """``samples1 * blend_factor + samples2 * (1 - blend_factor)``.

    When the shapes differ, samples2 is resized (bicubic, centre crop) to samples1's height and width;
    a batch of one is broadcast against the other batch, as in ComfyUI.
    """
    first, second = samples1["samples"], samples2["samples"]
    if first.shape != second.shape:
        second = resize(second, first.shape[-1], first.shape[-2], "bicubic", "center")
    _broadcast_batch(first, second, "LatentBlend")
    second = second.to(first)
    return _with_samples(samples1, first * blend_factor + second * (1.0 - blend_factor))


def subtract_latents(samples1: Latent, samples2: Latent) -> Latent:
    """``samples1 - samples2``; samples2 is resized and repeated to samples1's shape when they differ."""
    first = samples1["samples"]
    return _with_samples(samples1, first - match_latent(first, samples2["samples"], repeat_batch=True))


def interpolate_latents(samples1: Latent, samples2: Latent, ratio: float) -> Latent:
    """A norm-preserving interpolation, per latent pixel (``ratio`` 1 gives samples1, 0 samples2).

    Each pixel's channel vector is split into a length and a direction; the directions are mixed
    linearly and renormalised, the lengths mixed linearly::

        d = normalize(ratio * s1 / |s1| + (1 - ratio) * s2 / |s2|)
        out = d * (ratio * |s1| + (1 - ratio) * |s2|)

    A zero vector has no direction: its 0/0 counts as 0 (ComfyUI's ``nan_to_num``).
    """
    first = samples1["samples"]
    second = match_latent(first, samples2["samples"], repeat_batch=True)
    norm1 = torch.linalg.vector_norm(first, dim=1, keepdim=True)
    norm2 = torch.linalg.vector_norm(second, dim=1, keepdim=True)
    mixed = torch.nan_to_num(first / norm1) * ratio + torch.nan_to_num(second / norm2) * (1.0 - ratio)
    direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1, keepdim=True))
    return _with_samples(samples1, direction * (norm1 * ratio + norm2 * (1.0 - ratio)))


def concat_latents(samples1: Latent, samples2: Latent, dim: str) -> Latent:
    """samples1 and samples2 joined along x (width), y (height) or t (the dim before them: the channels
    of an image latent); "-x", "-y", "-t" put samples2 first. samples2 is repeated to samples1's batch."""
    _choice(dim, CONCAT_DIMS, "dim")
    first = samples1["samples"]
    second = repeat_to_batch(samples2["samples"], first.shape[0]).to(first)
    parts = (second, first) if dim.startswith("-") else (first, second)
    axis = _AXES[dim.lstrip("-")]
    try:
        joined = torch.cat(parts, dim=axis)
    except RuntimeError as exc:
        raise ValueError(f"LatentConcat: latents of shapes {tuple(first.shape)} and {tuple(second.shape)} "
                         f"cannot be joined along {dim!r}; every other size must match") from exc
    return _with_samples(samples1, joined)


def cut_latent(latent: Latent, dim: str, index: int, amount: int) -> Latent:
    """``amount`` latent pixels along x, y or t from ``index`` (negative counts from the end), clamped
    to the latent: an index past the end keeps the last pixel, one before the start the first."""
    axis = latent["samples"].ndim + _AXES[CUT_DIMS[_choice(dim, CUT_DIMS, "dim")]]
    samples = latent["samples"]
    size = samples.shape[axis]
    if index >= 0:
        start = min(index, size - 1)
        length = min(size - start, amount)
    else:
        start = size + max(index, -size)
        length = min(size - start, amount)
    return _with_samples(latent, torch.narrow(samples, axis, start, length))


def seed_behavior(latent: Latent, behavior: str) -> Latent:
    """How a batch is seeded when sampled: "random" gives each item its own noise (drops
    ``batch_index``), "fixed" gives every item the noise of the first one."""
    _choice(behavior, SEED_BEHAVIORS, "seed behavior")
    out = dict(latent)
    if behavior == "random":
        out.pop("batch_index", None)
    else:
        first = list(latent.get("batch_index", [0]))[0]
        out["batch_index"] = [first] * latent["samples"].shape[0]
    return out


def composite_latent_masked(destination: Latent, source: Latent, x: int, y: int, resize_source: bool,
                            mask: Tensor | None = None) -> Latent:
    """``source`` pasted into a copy of ``destination`` at (x, y) pixels through ``mask`` (1 = source).

    The mask is resized (bilinear) to the source's latent size and repeated to its batch; with
    ``resize_source`` the source is first resized (bilinear) to the destination's size. The source is
    repeated to the destination's batch and cut where it leaves the destination.
    """
    dest, src = destination["samples"], source["samples"]
    if dest.shape[1] != src.shape[1]:
        raise ValueError(f"LatentCompositeMasked: the latents have {dest.shape[1]} and {src.shape[1]} channels; "
                         "they come from different model families and cannot be combined")
    pasted = composite_masked(dest.movedim(1, -1), src.movedim(1, -1), x // LATENT_SCALE, y // LATENT_SCALE,
                              mask, resize_source)
    return _with_samples(destination, pasted.movedim(-1, 1).contiguous())
