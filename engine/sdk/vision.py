"""Torch-backed SDK for CLIP vision, style models and unCLIP conditioning (imported inside ``run``).

* :func:`clip_vision_handle` / :func:`encode_image`: CLIPVisionLoader and CLIPVisionEncode;
* :func:`style_model_handle` / :func:`apply_style_model`: StyleModelLoader and StyleModelApply
  (:func:`style_model_input`: the token width a style model takes);
* :func:`add_unclip`: unCLIPConditioning (the sampler turns the entries into SDXL's pooled vector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.backend.clip_vision import ClipVisionOutput
from engine.backend.clip_vision import encode_image as encode_with_tower
from engine.backend.style_models import apply_style
from engine.context import RunContext
from engine.errors import LoomError
from engine.models.clip_vision import load_clip_vision, load_style_model
from engine.models.handles import FileRef
from engine.models.vision_handles import ClipVisionHandle, StyleModelHandle

__all__ = ["ClipVisionHandle", "ClipVisionOutput", "StyleModelHandle", "add_unclip", "apply_style_model",
           "clip_vision_handle", "encode_image", "style_model_handle", "style_model_input"]

Conditioning = list[list[Any]]


def _placement(ctx: RunContext) -> tuple[str, torch.dtype]:
    """The engine's compute device and dtype (the CPU in float32 where the run has no model owner)."""
    try:
        return str(ctx.models.device), ctx.models.dtype
    except LoomError:
        return "cpu", torch.float32


def clip_vision_handle(ctx: RunContext, path: Path, prefix: str = "") -> ClipVisionHandle:
    """Check that ``path`` is (or holds under ``prefix``) a CLIP vision tower, loading it into the cache,
    and name its kind."""
    file = FileRef.of(path)
    _, label = load_clip_vision(file, *_placement(ctx), prefix)
    return ClipVisionHandle(file, label, prefix)


def encode_image(ctx: RunContext, handle: ClipVisionHandle, image: Tensor, crop: bool) -> ClipVisionOutput:
    """CLIPVisionEncode: the tower's preprocessing (CLIP's or SigLIP's, at its resolution), then the tower."""
    model, _ = load_clip_vision(handle.file, *_placement(ctx), handle.prefix)
    return encode_with_tower(model, image, crop)


def style_model_handle(path: Path) -> StyleModelHandle:
    file = FileRef.of(path)
    model = load_style_model(file)
    return StyleModelHandle(file, type(model).__name__)


def style_model_input(handle: StyleModelHandle) -> tuple[int, str]:
    """The token width a style model takes and the vision tower that gives it."""
    model = load_style_model(handle.file)
    return int(getattr(model, "input_width", 0)), str(getattr(model, "tower", "its CLIP vision tower"))


def apply_style_model(conditioning: Conditioning, handle: StyleModelHandle, output: ClipVisionOutput,
                      strength: float, strength_type: str) -> Conditioning:
    """StyleModelApply: the style tokens of the vision tokens appended to every entry's embedding."""
    model = load_style_model(handle.file)
    tokens = model(output.last_hidden_state.float())
    return apply_style(conditioning, tokens.detach(), strength, strength_type)


def add_unclip(conditioning: Conditioning, output: ClipVisionOutput, strength: float,
               noise_augmentation: float) -> Conditioning:
    """unCLIPConditioning: append ``{clip_vision_output, strength, noise_augmentation}`` to each entry's
    ``unclip_conditioning`` list (new extras dicts; the inputs are not changed)."""
    entry = {"clip_vision_output": output, "strength": strength, "noise_augmentation": noise_augmentation}
    out: Conditioning = []
    for embedding, extras in conditioning:
        extra = dict(extras)
        extra["unclip_conditioning"] = [*extras.get("unclip_conditioning", []), entry]
        out.append([embedding, extra])
    return out
