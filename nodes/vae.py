"""VAE nodes: pixels <-> latents, whole or in tiles (for large images on small devices).

IMAGE is [B, H, W, C] in 0..1; LATENT samples are the raw VAE latents (the model's scale factor is
applied by the sampler, as ComfyUI does). Images are cropped to a multiple of 8 before encoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.sdk import IMAGE, INT, LATENT, VAE, Input, Node, Output, RunContext, VaeHandle

if TYPE_CHECKING:
    from torch import Tensor

Latent = dict[str, Any]


class VAEDecode(Node):
    """Turn latents into images."""

    category = "latent"
    inputs = (Input("samples", LATENT), Input("vae", VAE))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, samples: Latent, vae: VaeHandle) -> tuple[Tensor]:
        from engine.sdk import ops

        return (ops.decode(ctx, vae, samples["samples"]),)


class VAEEncode(Node):
    """Turn images into latents (image-to-image starts here)."""

    category = "latent"
    inputs = (Input("pixels", IMAGE), Input("vae", VAE))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, pixels: Tensor, vae: VaeHandle) -> tuple[Latent]:
        from engine.sdk import ops

        return ({"samples": ops.encode(ctx, vae, pixels)},)


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
        from engine.sdk import ops

        tile, lap = max(tile_size // 8, 8), min(overlap // 8, max(tile_size // 8 // 2 - 1, 0))
        return (ops.decode_tiled_latent(ctx, vae, samples["samples"], tile, lap),)


class VAEEncodeTiled(Node):
    """Encode in overlapping tiles with blended seams."""

    display_name = "VAE Encode (Tiled)"
    category = "_for_testing"
    inputs = (Input("pixels", IMAGE), Input("vae", VAE), *_tile_inputs())
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, pixels: Tensor, vae: VaeHandle, tile_size: int, overlap: int
            ) -> tuple[Latent]:
        from engine.sdk import ops

        lap = min(overlap, tile_size // 2 - 8)
        return ({"samples": ops.encode_tiled_image(ctx, vae, pixels, tile_size, max(lap, 0))},)


VAE_NODES = (VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled)
