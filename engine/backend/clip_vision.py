"""CLIP vision encoding: ComfyUI's CLIP image preprocessing and the CLIP_VISION_OUTPUT value.

Preprocessing (as ComfyUI's ``clip_preprocess``): RGB only; ``crop=True`` resizes the shortest side to
``size`` (other side ``round(scale * side)``) and takes the centre ``size x size``; ``crop=False``
resizes straight to ``size x size``. The resize is bicubic with antialiasing; pixels are then rounded
to 8 bits (``round(clip(255 x, 0, 255)) / 255``) and normalised with CLIP's mean and std.

The vision tower is a ``transformers`` ``CLIPVisionModelWithProjection`` (built by engine/models);
:func:`encode` runs it and keeps ComfyUI's three outputs: ``image_embeds`` (the projected, post-layer-norm
class token), ``last_hidden_state`` (the last layer's tokens, no final norm) and
``penultimate_hidden_states`` (the second-to-last layer's tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipVisionOutput", "encode", "preprocess"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: one row per input image (float32, CPU)."""

    image_embeds: Tensor  # [B, projection_dim]
    last_hidden_state: Tensor  # [B, tokens, hidden]
    penultimate_hidden_states: Tensor  # [B, tokens, hidden]

    def __getitem__(self, key: str) -> Tensor:  # ComfyUI's Output reads like a mapping too
        value: Tensor = getattr(self, key)
        return value


def preprocess(image: Tensor, size: int = 224, crop: bool = True) -> Tensor:
    """IMAGE ``[B, H, W, C]`` in 0..1 -> normalised pixel values ``[B, 3, size, size]`` (float32)."""
    pixels = image[..., :3].float().movedim(-1, 1)
    height, width = pixels.shape[-2:]
    if crop:
        scale = size / min(height, width)
        target = (round(scale * height), round(scale * width))
    else:
        target = (size, size)
    if (height, width) != target:
        pixels = functional.interpolate(pixels, size=target, mode="bicubic", antialias=True)
    top, left = (pixels.shape[-2] - size) // 2, (pixels.shape[-1] - size) // 2
    pixels = pixels[:, :, top:top + size, left:left + size]
    pixels = torch.clamp(255.0 * pixels, 0, 255).round() / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - mean) / std


def encode(model: nn.Module, pixel_values: Tensor) -> ClipVisionOutput:
    """Run a ``CLIPVisionModelWithProjection`` on preprocessed pixels; outputs on the CPU in float32."""
    param = next(model.parameters())
    with torch.inference_mode():
        out = model(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype),
                    output_hidden_states=True)
    return ClipVisionOutput(
        image_embeds=out.image_embeds.float().cpu(),
        last_hidden_state=out.last_hidden_state.float().cpu(),
        penultimate_hidden_states=out.hidden_states[-2].float().cpu(),
    )
