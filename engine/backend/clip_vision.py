"""Vision-tower encoding: ComfyUI's image preprocessing and the CLIP_VISION_OUTPUT value.

Preprocessing (as ComfyUI's ``clip_preprocess``): RGB only; ``crop=True`` resizes the shortest side to
``size`` (other side ``round(scale * side)``) and takes the centre ``size x size``; ``crop=False``
resizes straight to ``size x size``; an image already ``size x size`` is not resampled. The resize is
bicubic with antialiasing; pixels are then rounded to 8 bits (``round(clip(255 x, 0, 255)) / 255``) and
normalised with the tower's mean and std: CLIP's for CLIP towers (224 px), 0.5 / 0.5 for SigLIP (384 px
for Flux Redux's ``sigclip_vision_patch14_384``), the values of ComfyUI's tower configs.

Two kinds of tower, both transformers modules built by engine/models:

* ``CLIPVisionModelWithProjection``: ``image_embeds`` is the projected, post-layer-norm class token
  ``[B, projection_dim]``; ``last_hidden_state`` the last layer's tokens (no final norm);
* ``SiglipVisionModel`` (no class token, no projection): ``last_hidden_state`` is the last layer's tokens
  *after* the post layer norm, ``[B, patches, hidden]``, and ``image_embeds`` is that same tensor, as in
  ComfyUI (its SigLIP "pooled output" is the whole normed sequence; the attention-pooling head is unused).

``penultimate_hidden_states`` is the second-to-last layer's tokens (no norm) for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

__all__ = ["CLIP_MEAN", "CLIP_STD", "SIGLIP_MEAN", "SIGLIP_STD", "ClipVisionOutput", "encode", "encode_image",
           "is_siglip", "preprocess"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
SIGLIP_TYPE = "siglip_vision_model"


@dataclass(frozen=True)
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: one row per input image (float32, CPU)."""

    image_embeds: Tensor  # CLIP: [B, projection_dim]; SigLIP: [B, tokens, hidden] (= last_hidden_state)
    last_hidden_state: Tensor  # [B, tokens, hidden]
    penultimate_hidden_states: Tensor  # [B, tokens, hidden]

    def __getitem__(self, key: str) -> Tensor:  # ComfyUI's Output reads like a mapping too
        value: Tensor = getattr(self, key)
        return value


def preprocess(image: Tensor, size: int = 224, crop: bool = True, mean: tuple[float, ...] = CLIP_MEAN,
               std: tuple[float, ...] = CLIP_STD) -> Tensor:
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
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - mean_t) / std_t


def is_siglip(model: nn.Module) -> bool:
    """Whether ``model`` is a SigLIP vision tower (transformers' ``SiglipVisionModel``)."""
    return getattr(getattr(model, "config", None), "model_type", "") == SIGLIP_TYPE


def encode(model: nn.Module, pixel_values: Tensor) -> ClipVisionOutput:
    """Run a CLIP or SigLIP vision tower on preprocessed pixels; outputs on the CPU in float32."""
    param = next(model.parameters())
    with torch.inference_mode():
        out = model(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype),
                    output_hidden_states=True)
    last = out.last_hidden_state.float().cpu()
    return ClipVisionOutput(
        image_embeds=last if is_siglip(model) else out.image_embeds.float().cpu(),
        last_hidden_state=last,
        penultimate_hidden_states=out.hidden_states[-2].float().cpu(),
    )


def encode_image(model: nn.Module, image: Tensor, crop: bool) -> ClipVisionOutput:
    """CLIPVisionEncode: the tower's preprocessing (its image size; CLIP's or SigLIP's mean and std), then
    :func:`encode`."""
    size = getattr(model.config, "image_size", 224)
    mean, std = (SIGLIP_MEAN, SIGLIP_STD) if is_siglip(model) else (CLIP_MEAN, CLIP_STD)
    pixels = preprocess(image, size=size if isinstance(size, int) else 224, crop=crop, mean=mean, std=std)
    return encode(model, pixels)
