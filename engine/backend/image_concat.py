"""Image conditioning that enters the UNet as extra input channels, beside the 9-channel inpainting case
(:func:`engine.backend.pipeline.inpaint_concat`).

* InstructPix2Pix (8-channel UNet): the input image's VAE latent (``concat_latent_image`` on the
  conditioning, put there by InstructPixToPixConditioning) follows the 4 latent channels; without one
  the extra channels are zeros. CFG is the ordinary two-way CFG: the node puts the image on the positive
  and the negative alike.
* :func:`ip2p_pixels` / :func:`x4_upscale_pixels`: the pixel preparation of InstructPixToPixConditioning
  and SD_4XUpscale_Conditioning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from engine.backend.latent_formats import LatentFormat
from engine.backend.latents import repeat_to_batch
from engine.backend.resample import resize

__all__ = ["IP2P_KEY", "ip2p_concat", "ip2p_pixels", "ip2p_source", "x4_upscale_pixels"]

#: The conditioning key of the input image's VAE latent.
IP2P_KEY = "concat_latent_image"


def ip2p_pixels(pixels: Tensor) -> Tensor:
    """IMAGE ``[B, H, W, C]`` centre-cropped to multiples of 8 (what the VAE encodes)."""
    height, width = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    return pixels[:, top:top + height, left:left + width, :]


def x4_upscale_pixels(images: Tensor, scale_ratio: float) -> tuple[Tensor, int, int]:
    """SD_4XUpscale_Conditioning's low-res input: the images in -1..1 ``[B, C, h, w]`` resized (bilinear,
    centre crop) to a quarter of the target size, and the target ``(width, height)`` in pixels."""
    width = max(1, round(images.shape[-2] * scale_ratio))
    height = max(1, round(images.shape[-3] * scale_ratio))
    pixels = resize(images.movedim(-1, 1).float() * 2.0 - 1.0, max(1, width // 4), max(1, height // 4),
                    "bilinear", "center")
    return pixels, width, height


def ip2p_source(positive: list[Any], latent: dict[str, Any]) -> Tensor | None:
    """The image latent of the first positive entry that carries one (else the LATENT's own, if any)."""
    for source in (*(extras for _, extras in positive), latent):
        if source.get(IP2P_KEY) is not None:
            image: Tensor = source[IP2P_KEY]
            return image
    return None


def ip2p_concat(image: Tensor | None, model_latent: Tensor, latent_format: LatentFormat) -> Tensor:
    """The 4 extra input channels of an InstructPix2Pix UNet: the image latent in the model's scale,
    resized (bilinear) to the latent and repeated to its batch; zeros without an image."""
    if image is None:
        return torch.zeros_like(model_latent)
    scaled = latent_format.to_model(image.float().to(model_latent.device))
    if scaled.shape[-2:] != model_latent.shape[-2:]:
        scaled = functional.interpolate(scaled, size=tuple(model_latent.shape[-2:]), mode="bilinear")
    return repeat_to_batch(scaled, model_latent.shape[0]).to(model_latent)
