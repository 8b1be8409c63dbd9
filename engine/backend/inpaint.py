"""Pixels for inpainting and outpainting: cropping for the VAE, greying out masked pixels, padding
images with grey and the feathered mask over the padding (ComfyUI's inpaint nodes).

IMAGE is float ``[B, H, W, C]`` in 0..1; MASK is float ``[B, H, W]`` (any accepted rank), 1 = regenerate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.latents import repeat_to_batch
from engine.backend.masks import grow_binary_mask, mask_4d

__all__ = ["MASKED_GREY", "VAE_SCALE", "crop_for_vae", "grey_out", "inpaint_model_pixels", "outpaint_feather",
           "pad_for_outpaint", "prepare_inpaint_pixels"]

#: Pixels per latent pixel (SD VAEs); images are cropped to a multiple of it before encoding.
VAE_SCALE = 8
#: The grey that hides masked pixels from the VAE (ComfyUI's choice).
MASKED_GREY = 0.5


def crop_for_vae(pixels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The image cropped (centred) to a multiple of 8, and the mask resized (bilinear) to the image and
    cropped alike, [B, 1, H, W]: what ComfyUI's inpaint encoders start from."""
    height, width = pixels.shape[1], pixels.shape[2]
    crop_h, crop_w = height // VAE_SCALE * VAE_SCALE, width // VAE_SCALE * VAE_SCALE
    if crop_h == 0 or crop_w == 0:
        raise ValueError(f"input 'pixels': the image is {width}x{height}; it must be at least 8x8 pixels")
    mask = F.interpolate(mask_4d(mask), size=(height, width), mode="bilinear")
    top, left = (height % VAE_SCALE) // 2, (width % VAE_SCALE) // 2
    return pixels[:, top:top + crop_h, left:left + crop_w], mask[:, :, top:top + crop_h, left:left + crop_w]


def grey_out(pixels: Tensor, mask: Tensor) -> Tensor:
    """A copy of ``pixels`` with 0.5 grey wherever the mask [B, 1, H, W] rounds to 1."""
    keep = repeat_to_batch(1.0 - mask.round(), pixels.shape[0]).squeeze(1).unsqueeze(-1)
    grey = pixels.clone()
    grey[..., :3] = (pixels[..., :3] - MASKED_GREY) * keep + MASKED_GREY
    return grey


def prepare_inpaint_pixels(pixels: Tensor, mask: Tensor, grow_mask_by: int) -> tuple[Tensor, Tensor]:
    """``(pixels, noise_mask)`` for VAEEncodeForInpaint.

    The mask is resized (bilinear) to the image; both are cropped (centred) to a multiple of 8; the
    pixels under the rounded mask become 0.5 grey; the noise mask is the rounded mask grown by
    ``grow_mask_by`` pixels (so the seam is regenerated too), [B, 1, H, W].
    """
    pixels, mask = crop_for_vae(pixels, mask)
    return grey_out(pixels, mask), grow_binary_mask(mask.round(), grow_mask_by).round()


def inpaint_model_pixels(pixels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(masked pixels, mask)`` for an inpainting model's extra inputs: both cropped as for the VAE,
    the pixels greyed out under the rounded mask, the mask [B, 1, H, W] left as resized."""
    cropped, cropped_mask = crop_for_vae(pixels, mask)
    return grey_out(cropped, cropped_mask), cropped_mask


def outpaint_feather(height: int, width: int, feathering: int, top: bool, bottom: bool, left: bool,
                     right: bool) -> Tensor:
    """The mask over the original image [H, W]: ((f - d) / f)^2 within ``f`` pixels of a padded edge.

    ``d`` is the distance (in pixels, 0 at the edge row) to the nearest edge that was padded; pixels
    farther than ``feathering`` stay 0. No feathering when 2 * feathering is not below both sides.
    """
    mask = torch.zeros((height, width), dtype=torch.float32)
    if feathering <= 0 or feathering * 2 >= height or feathering * 2 >= width:
        return mask
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    far_rows, far_cols = torch.full_like(rows, height), torch.full_like(cols, width)
    distance = torch.stack([
        rows if top else far_rows,
        height - rows if bottom else far_rows,
        cols if left else far_cols,
        width - cols if right else far_cols,
    ]).amin(dim=0)
    ramp = ((feathering - distance) / feathering) ** 2
    return torch.where(distance < feathering, ramp, mask)


def pad_for_outpaint(image: Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[Tensor, Tensor]:
    """``image`` padded with grey, and the mask [1, H, W]: 1 over the padding, feathered into the image."""
    batch, height, width, channels = image.shape
    new_h, new_w = height + top + bottom, width + left + right
    padded = torch.full((batch, new_h, new_w, channels), MASKED_GREY, dtype=torch.float32)
    padded[:, top:top + height, left:left + width] = image
    mask = torch.ones((new_h, new_w), dtype=torch.float32)
    mask[top:top + height, left:left + width] = outpaint_feather(
        height, width, feathering, top != 0, bottom != 0, left != 0, right != 0)
    return padded, mask[None]
