"""VAE as a pack sees it: :class:`ComfyVae`, the parts of ComfyUI's ``comfy.sd.VAE`` packs use most.

``encode(pixels)`` takes an IMAGE ([B, H, W, C] in 0..1, cropped to a multiple of 8 as ComfyUI's
VAE crops it) and returns the raw latent samples [B, 4, H / 8, W / 8] (the LATENT dict is the node's
to build); ``decode(samples)`` returns an IMAGE [B, H, W, 3]. Both run Loom's VAE of the running node
(``ctx.models``), the same operations as Loom's VAEEncode and VAEDecode.

Torch-free at import: the torch side is imported when a value is needed.
"""

from __future__ import annotations

from typing import Any

from engine.custom_nodes.model_objects import unsupported
from engine.custom_nodes.runtime import current_run
from engine.models.handles import VaeHandle

__all__ = ["ComfyVae"]

_DOWNSCALE = 8
_LATENT_CHANNELS = 4


def _run_context() -> Any:
    ctx = current_run()
    if ctx is None:
        raise RuntimeError("a VAE encodes and decodes only while a node runs")
    return ctx


class ComfyVae:
    """ComfyUI's VAE over a Loom VAE handle (see the module docstring)."""

    downscale_ratio = _DOWNSCALE
    upscale_ratio = _DOWNSCALE
    latent_channels = _LATENT_CHANNELS

    def __init__(self, handle: VaeHandle) -> None:
        self.handle = handle

    def encode(self, pixel_samples: Any) -> Any:
        """IMAGE [B, H, W, C] (0..1) -> latent samples [B, 4, H / 8, W / 8], float32 on the CPU."""
        from engine.sdk import ops

        return ops.encode(_run_context(), self.handle, pixel_samples)

    def decode(self, samples_in: Any) -> Any:
        """Latent samples [B, 4, h, w] -> IMAGE [B, 8h, 8w, 3] in 0..1 on the CPU."""
        from engine.sdk import ops

        return ops.decode(_run_context(), self.handle, samples_in)

    def encode_tiled(self, pixel_samples: Any, tile_x: int | None = None, tile_y: int | None = None,
                     overlap: int | None = None, **kwargs: Any) -> Any:
        """Encode in tiles of ``tile_x`` pixels (square tiles: Loom's tiles have one size)."""
        from engine.sdk import ops

        return ops.encode_tiled_image(_run_context(), self.handle, pixel_samples, int(tile_x or 512),
                                        int(64 if overlap is None else overlap))

    def decode_tiled(self, samples: Any, tile_x: int | None = None, tile_y: int | None = None,
                     overlap: int | None = None, **kwargs: Any) -> Any:
        """Decode in tiles of ``tile_x`` latent pixels (square tiles: Loom's tiles have one size)."""
        from engine.sdk import ops

        return ops.decode_tiled_latent(_run_context(), self.handle, samples, int(tile_x or 64),
                                         int(16 if overlap is None else overlap))

    def spacial_compression_encode(self) -> int:
        return _DOWNSCALE

    def spacial_compression_decode(self) -> int:
        return _DOWNSCALE

    def temporal_compression_decode(self) -> None:
        return None

    def vae_encode_crop_pixels(self, pixels: Any) -> Any:
        """``pixels`` cropped (centred) to a multiple of 8 in height and width, as encode crops them."""
        height, width = pixels.shape[1] // _DOWNSCALE * _DOWNSCALE, pixels.shape[2] // _DOWNSCALE * _DOWNSCALE
        top, left = (pixels.shape[1] - height) // 2, (pixels.shape[2] - width) // 2
        return pixels[:, top:top + height, left:left + width, :]

    def get_sd(self) -> Any:
        raise unsupported("VAE.get_sd")
