"""Inpainting and outpainting nodes: VAEEncodeForInpaint, SetLatentNoiseMask, InpaintModelConditioning,
ImagePadForOutpaint.

A LATENT's ``noise_mask`` ([B, 1, H, W], any resolution, 1 = regenerate) makes the sampler keep the
rest of the latent: the kept region is re-noised to each step's sigma and the final latent there is
the input (``engine.backend.guidance.InpaintDenoiser``). A 9-channel inpainting model additionally
receives the mask and the masked image's latent as extra input channels (``nodes.sampling``).

MASK is float [B, H, W] (or [H, W]); IMAGE is float [B, H, W, C] in 0..1, as in ComfyUI.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.context import RunContext
from engine.models.handles import VaeHandle
from engine.node import Input, Node, Output
from engine.types import BOOLEAN, CONDITIONING, IMAGE, INT, LATENT, MASK, VAE
from nodes.image_ops import MAX_RESOLUTION

Latent = dict[str, Any]
Conditioning = list[list[Any]]

#: Pixels per latent pixel (SD VAEs); images are cropped to a multiple of it before encoding.
VAE_SCALE = 8
#: The grey that hides masked pixels from the VAE (ComfyUI's choice).
MASKED_GREY = 0.5


def mask_4d(mask: Tensor) -> Tensor:
    """A MASK ([H, W], [B, H, W] or [B, 1, H, W]) as float [B, 1, H, W]."""
    return mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()


def grow_binary_mask(mask: Tensor, grow_by: int) -> Tensor:
    """Dilate a 0/1 mask [B, 1, H, W] with a ``grow_by`` x ``grow_by`` box, as ComfyUI's VAEEncodeForInpaint.

    Output row i is set when any input row in i - p .. i - p + k - 1 is, with p = ceil((k - 1) / 2): the
    mask grows by k - 1 - p rows up / columns left and p down / right (an even k grows one more
    down / right); the result keeps the input's size.
    """
    if grow_by <= 0:
        return mask
    padding = math.ceil((grow_by - 1) / 2)
    grown = F.max_pool2d(mask, kernel_size=grow_by, stride=1, padding=padding)
    return grown[..., : mask.shape[-2], : mask.shape[-1]]


def _repeat_batch(tensor: Tensor, batch: int) -> Tensor:
    if tensor.shape[0] == batch:
        return tensor
    return tensor.repeat((math.ceil(batch / tensor.shape[0]),) + (1,) * (tensor.ndim - 1))[:batch]


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
    keep = _repeat_batch(1.0 - mask.round(), pixels.shape[0]).squeeze(1).unsqueeze(-1)
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


def _encode(ctx: RunContext, vae: VaeHandle, pixels: Tensor) -> Tensor:
    from engine.sdk import ops

    return ops.encode(ctx, vae, pixels)


class VAEEncodeForInpaint(Node):
    """Encode an image for inpainting: masked pixels are greyed out and the latent gets a noise mask."""

    display_name = "VAE Encode (for Inpainting)"
    category = "latent/inpaint"
    inputs = (
        Input("pixels", IMAGE),
        Input("vae", VAE),
        Input("mask", MASK),
        Input("grow_mask_by", INT, default=6, min=0, max=64, step=1,
              tooltip="Pixels the mask grows by so the seam around it is regenerated too."),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, pixels: Tensor, vae: VaeHandle, mask: Tensor, grow_mask_by: int
            ) -> tuple[Latent]:
        grey, noise_mask = prepare_inpaint_pixels(pixels, mask, grow_mask_by)
        return ({"samples": _encode(ctx, vae, grey), "noise_mask": noise_mask},)


class SetLatentNoiseMask(Node):
    """Only regenerate the masked part of a latent (img2img inpainting with any model)."""

    display_name = "Set Latent Noise Mask"
    category = "latent/inpaint"
    inputs = (Input("samples", LATENT), Input("mask", MASK))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, mask: Tensor) -> tuple[Latent]:
        return ({**samples, "noise_mask": mask_4d(mask)},)


class InpaintModelConditioning(Node):
    """Prepare an inpainting model's inputs: the masked image and mask go on the conditioning, the whole
    image becomes the latent (with the mask as its noise mask unless noise_mask is off)."""

    category = "conditioning/inpaint"
    inputs = (
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("vae", VAE),
        Input("pixels", IMAGE),
        Input("mask", MASK),
        Input("noise_mask", BOOLEAN, default=True,
              tooltip="Also set the mask as the latent's noise mask, so only the masked part is resampled. "
                      "Helps most models; some prefer it off."),
    )
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def run(self, ctx: RunContext, positive: Conditioning, negative: Conditioning, vae: VaeHandle,
            pixels: Tensor, mask: Tensor, noise_mask: bool) -> tuple[Conditioning, Conditioning, Latent]:
        cropped, cropped_mask = crop_for_vae(pixels, mask)
        extra = {"concat_latent_image": _encode(ctx, vae, grey_out(cropped, cropped_mask)),
                 "concat_mask": cropped_mask}
        latent: Latent = {"samples": _encode(ctx, vae, pixels)}
        if noise_mask:
            latent["noise_mask"] = cropped_mask
        positive = [[cond, {**extras, **extra}] for cond, extras in positive]
        negative = [[cond, {**extras, **extra}] for cond, extras in negative]
        return positive, negative, latent


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


class ImagePadForOutpaint(Node):
    """Pad an image with grey for outpainting; the mask is 1 over the padding, feathered into the image."""

    display_name = "Pad Image for Outpainting"
    category = "image"
    inputs = (
        Input("image", IMAGE),
        Input("left", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("top", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("right", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("bottom", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("feathering", INT, default=40, min=0, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output(IMAGE), Output(MASK))

    def run(self, ctx: RunContext, image: Tensor, left: int, top: int, right: int, bottom: int,
            feathering: int) -> tuple[Tensor, Tensor]:
        batch, height, width, channels = image.shape
        new_h, new_w = height + top + bottom, width + left + right
        padded = torch.full((batch, new_h, new_w, channels), MASKED_GREY, dtype=torch.float32)
        padded[:, top:top + height, left:left + width] = image
        mask = torch.ones((new_h, new_w), dtype=torch.float32)
        mask[top:top + height, left:left + width] = outpaint_feather(
            height, width, feathering, top != 0, bottom != 0, left != 0, right != 0)
        return (padded, mask[None])


INPAINT_NODES: tuple[type[Node], ...] = (VAEEncodeForInpaint, SetLatentNoiseMask, InpaintModelConditioning,
                                         ImagePadForOutpaint)
