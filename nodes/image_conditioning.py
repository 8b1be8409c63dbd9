"""Conditioning nodes that hand an image to models taking it as extra UNet input channels:
InstructPixToPixConditioning (8-channel InstructPix2Pix UNets) and SD_4XUpscale_Conditioning (the SD x4
upscaler: the sampler adds the noised low-res image and its noise level, engine/backend/x4_upscaler.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.sdk import CONDITIONING, FLOAT, IMAGE, LATENT, VAE, Input, Node, Output, RunContext, VaeHandle

if TYPE_CHECKING:
    from torch import Tensor

Latent = dict[str, Any]
Conditioning = list[list[Any]]


def _with(conditioning: Conditioning, extra: dict[str, Any]) -> Conditioning:
    return [[cond, {**extras, **extra}] for cond, extras in conditioning]


class InstructPixToPixConditioning(Node):
    """Give an InstructPix2Pix model its input image: the image's latent goes on both conditionings (the
    sampler adds it as extra input channels); the output latent is empty, of the image's size."""

    category = "conditioning/instructpix2pix"
    inputs = (
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("vae", VAE),
        Input("pixels", IMAGE),
    )
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def run(self, ctx: RunContext, positive: Conditioning, negative: Conditioning, vae: VaeHandle,
            pixels: Tensor) -> tuple[Conditioning, Conditioning, Latent]:
        import torch

        from engine.sdk import image_conditioning, ops

        image_latent = ops.encode(ctx, vae, image_conditioning.ip2p_pixels(pixels))
        extra = {image_conditioning.IP2P_KEY: image_latent}
        return _with(positive, extra), _with(negative, extra), {"samples": torch.zeros_like(image_latent)}


class SD_4XUpscale_Conditioning(Node):  # noqa: N801  (ComfyUI's node name)
    """Prepare the SD x4 upscaler's inputs: the low-res image (in -1..1, at a quarter of the target size)
    and its noise augmentation go on both conditionings; the latent is empty, of the target size / 4."""

    category = "conditioning/upscale_diffusion"
    inputs = (
        Input("images", IMAGE),
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("scale_ratio", FLOAT, default=4.0, min=0.0, max=10.0, step=0.01),
        Input("noise_augmentation", FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
    )
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def run(self, ctx: RunContext, images: Tensor, positive: Conditioning, negative: Conditioning,
            scale_ratio: float, noise_augmentation: float) -> tuple[Conditioning, Conditioning, Latent]:
        import torch

        from engine.sdk import image_conditioning

        pixels, width, height = image_conditioning.x4_upscale_pixels(images, scale_ratio)
        extra = {"concat_image": pixels, "noise_augmentation": noise_augmentation}
        latent = torch.zeros(images.shape[0], 4, height // 4, width // 4)
        return _with(positive, extra), _with(negative, extra), {"samples": latent}


IMAGE_CONDITIONING_NODES: tuple[type[Node], ...] = (InstructPixToPixConditioning, SD_4XUpscale_Conditioning)
