"""Inpainting and outpainting nodes: VAEEncodeForInpaint, SetLatentNoiseMask, InpaintModelConditioning,
ImagePadForOutpaint.

A LATENT's ``noise_mask`` ([B, 1, H, W], any resolution, 1 = regenerate) makes the sampler keep the
rest of the latent: the kept region is re-noised to each step's sigma and the final latent there is
the input (``engine.backend.guidance.InpaintDenoiser``). A 9-channel inpainting model additionally
receives the mask and the masked image's latent as extra input channels (``nodes.sampling``).
The pixel work lives in :mod:`engine.sdk.imaging`.

MASK is float [B, H, W] (or [H, W]); IMAGE is float [B, H, W, C] in 0..1, as in ComfyUI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.sdk import BOOLEAN, CONDITIONING, IMAGE, INT, LATENT, MASK, VAE, Input, Node, Output, RunContext, VaeHandle
from nodes.image_ops import MAX_RESOLUTION

if TYPE_CHECKING:
    from torch import Tensor

Latent = dict[str, Any]
Conditioning = list[list[Any]]


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
        from engine.sdk import imaging, ops

        grey, noise_mask = imaging.prepare_inpaint_pixels(pixels, mask, grow_mask_by)
        return ({"samples": ops.encode(ctx, vae, grey), "noise_mask": noise_mask},)


class SetLatentNoiseMask(Node):
    """Only regenerate the masked part of a latent (img2img inpainting with any model)."""

    display_name = "Set Latent Noise Mask"
    category = "latent/inpaint"
    inputs = (Input("samples", LATENT), Input("mask", MASK))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, mask: Tensor) -> tuple[Latent]:
        from engine.sdk import imaging

        return ({**samples, "noise_mask": imaging.mask_4d(mask)},)


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
        from engine.sdk import imaging, ops

        masked, cropped_mask = imaging.inpaint_model_pixels(pixels, mask)
        extra = {"concat_latent_image": ops.encode(ctx, vae, masked), "concat_mask": cropped_mask}
        latent: Latent = {"samples": ops.encode(ctx, vae, pixels)}
        if noise_mask:
            latent["noise_mask"] = cropped_mask
        positive = [[cond, {**extras, **extra}] for cond, extras in positive]
        negative = [[cond, {**extras, **extra}] for cond, extras in negative]
        return positive, negative, latent


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
        from engine.sdk import imaging

        return imaging.pad_for_outpaint(image, left, top, right, bottom, feathering)


INPAINT_NODES: tuple[type[Node], ...] = (VAEEncodeForInpaint, SetLatentNoiseMask, InpaintModelConditioning,
                                         ImagePadForOutpaint)
