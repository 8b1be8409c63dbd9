"""VAE nodes: pixels <-> latents, whole or in tiles (for large images on small devices).

IMAGE is [B, H, W, C] in 0..1; LATENT samples are the raw VAE latents (the model's scale factor is
applied by the sampler, as ComfyUI does). Images are cropped to a multiple of 8 before encoding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.backend.vae import AutoencoderKL, decode_tiled, encode_tiled
from engine.context import RunContext
from engine.models.handles import VaeHandle
from engine.node import Input, Node, Output
from engine.types import IMAGE, INT, LATENT, VAE

Latent = dict[str, Any]


def to_pixels(decoded: Tensor) -> Tensor:
    """VAE output [B, 3, H, W] in -1..1 -> IMAGE [B, H, W, 3] in 0..1 on the CPU."""
    return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().contiguous()


def from_pixels(image: Tensor, vae: AutoencoderKL, device: torch.device) -> Tensor:
    """IMAGE [B, H, W, C] -> [B, 3, H', W'] in -1..1, cropped (centred) to a multiple of 8."""
    height, width = image.shape[1] // 8 * 8, image.shape[2] // 8 * 8
    if height == 0 or width == 0:
        raise ValueError(f"the image is {image.shape[2]}x{image.shape[1]}; it must be at least 8x8 pixels")
    top, left = (image.shape[1] - height) // 2, (image.shape[2] - width) // 2
    pixels = image[:, top:top + height, left:left + width, :3]
    return (pixels.permute(0, 3, 1, 2).to(device=device, dtype=vae.dtype) * 2.0 - 1.0)


class VAEDecode(Node):
    """Turn latents into images."""

    category = "latent"
    inputs = (Input("samples", LATENT), Input("vae", VAE))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, samples: Latent, vae: VaeHandle) -> tuple[Tensor]:
        model = ctx.models.vae(vae)
        with torch.inference_mode():
            return (to_pixels(model.decode(samples["samples"].to(ctx.models.device))),)


class VAEEncode(Node):
    """Turn images into latents (image-to-image starts here)."""

    category = "latent"
    inputs = (Input("pixels", IMAGE), Input("vae", VAE))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, pixels: Tensor, vae: VaeHandle) -> tuple[Latent]:
        model = ctx.models.vae(vae)
        with torch.inference_mode():
            return ({"samples": model.encode(from_pixels(pixels, model, ctx.models.device)).float().cpu()},)


def _tile_inputs() -> tuple[Input, ...]:
    return (Input("tile_size", INT, default=512, min=64, max=4096, step=32),
            Input("overlap", INT, default=64, min=0, max=4096, step=32))


class VAEDecodeTiled(Node):
    """Decode in overlapping tiles with blended seams: large images on little memory."""

    display_name = "VAE Decode (Tiled)"
    category = "_for_testing"
    inputs = (Input("samples", LATENT), Input("vae", VAE), *_tile_inputs())
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, samples: Latent, vae: VaeHandle, tile_size: int, overlap: int
            ) -> tuple[Tensor]:
        model = ctx.models.vae(vae)
        tile, lap = max(tile_size // 8, 8), min(overlap // 8, max(tile_size // 8 // 2 - 1, 0))
        with torch.inference_mode():
            return (to_pixels(decode_tiled(model, samples["samples"].to(ctx.models.device), tile, lap)),)


class VAEEncodeTiled(Node):
    """Encode in overlapping tiles with blended seams."""

    display_name = "VAE Encode (Tiled)"
    category = "_for_testing"
    inputs = (Input("pixels", IMAGE), Input("vae", VAE), *_tile_inputs())
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, pixels: Tensor, vae: VaeHandle, tile_size: int, overlap: int
            ) -> tuple[Latent]:
        model = ctx.models.vae(vae)
        lap = min(overlap, tile_size // 2 - 8)
        with torch.inference_mode():
            latent = encode_tiled(model, from_pixels(pixels, model, ctx.models.device), tile_size, max(lap, 0))
        return ({"samples": latent.float().cpu()},)


VAE_NODES = (VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled)
