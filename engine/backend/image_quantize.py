"""Palette quantization of IMAGE tensors through PIL, as ComfyUI's ImageQuantize does it.

Each image becomes 8-bit RGB (``x * 255`` truncated), PIL picks a palette of ``colors`` entries
(median cut), and the image is mapped onto it without dithering, with Floyd-Steinberg error
diffusion, or with an ordered (Bayer) threshold matrix of side 2, 4, 8 or 16.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["DITHER_MODES", "bayer_matrix", "quantize_image"]

DITHER_MODES: tuple[str, ...] = ("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")


def bayer_matrix(level: int) -> np.ndarray:
    """The normalised Bayer threshold matrix of side ``2 ** level``, entries centred on 0 (float32)."""
    if level == 0:
        return np.zeros((1, 1), dtype=np.float32)
    scale = 4**level
    inner = scale * bayer_matrix(level - 1)
    return np.block([[inner - 1.5, inner + 0.5], [inner + 1.5, inner - 0.5]]) / scale


def _bayer_dither(rgb: Image.Image, palette: Image.Image, order: int) -> Image.Image:
    """Offset every pixel by the tiled Bayer matrix (spread over the palette's spacing), then map
    onto the palette without dithering."""
    palette_size = len(palette.getpalette() or []) // 3
    spread = 2 * 256 / palette_size
    thresholds = spread * bayer_matrix(int(math.log2(order))) + 0.5
    pixels = np.asarray(rgb).astype(np.float32)
    reps = (math.ceil(pixels.shape[0] / order), math.ceil(pixels.shape[1] / order))
    tiled = np.tile(thresholds, reps)[: pixels.shape[0], : pixels.shape[1], None]
    offset = np.clip(pixels + tiled, 0, 255).astype(np.uint8)
    return Image.fromarray(offset).quantize(palette=palette, dither=Image.Dither.NONE)


def _quantize_one(pixels: np.ndarray, colors: int, dither: str) -> np.ndarray:
    rgb = Image.fromarray(pixels, mode="RGB")
    palette = rgb.quantize(colors=colors)
    if dither == "none":
        mapped = rgb.quantize(palette=palette, dither=Image.Dither.NONE)
    elif dither == "floyd-steinberg":
        mapped = rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    elif dither in DITHER_MODES:
        mapped = _bayer_dither(rgb, palette, int(dither.split("-")[-1]))
    else:
        raise ValueError(f"unknown dither {dither!r}; use one of {', '.join(DITHER_MODES)}")
    return np.asarray(mapped.convert("RGB"))


def quantize_image(image: Tensor, colors: int, dither: str) -> Tensor:
    """Reduce each image of the batch to at most ``colors`` RGB colours (see the module docstring).

    The result has three channels; an alpha channel is dropped (ComfyUI accepts RGB only).
    """
    rgb = (image[..., :3].detach().clamp(0, 1) * 255).to(device="cpu", dtype=torch.uint8).numpy()
    out = np.stack([_quantize_one(rgb[index], colors, dither) for index in range(rgb.shape[0])])
    return (torch.from_numpy(out).to(torch.float32) / 255).to(device=image.device, dtype=image.dtype)
