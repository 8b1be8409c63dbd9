"""Latent previews: a cheap linear latent -> RGB projection (or a TAESD decode), encoded as a small JPEG.

The projection is a per-family 4x3 matrix (plus bias) that approximates what the VAE would decode,
good enough to watch a sampler converge. Previews are sent only to clients that ask for them.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import Tensor

#: Latent-channel -> RGB factors (rows: latent channels) and bias, per latent format.
LATENT_RGB: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]] = {
    "sd1": (((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
             (-0.2120, -0.2616, -0.7177)), (0.0, 0.0, 0.0)),
    "sdxl": (((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
              (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011)),
    "playground_v2.5": (((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
                         (-0.3112, -0.2359, -0.2076)), (0.0, 0.0, 0.0)),
}


def latent_to_rgb(latent: Tensor, latent_format: str) -> Tensor:
    """The first item of a model-space latent [B, 4, h, w] as RGB uint8 [h, w, 3]."""
    factors, bias = LATENT_RGB.get(latent_format, LATENT_RGB["sd1"])
    weight = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent[0, : weight.shape[0]].float().cpu(), weight)
    rgb = rgb + torch.tensor(bias, dtype=torch.float32)
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255).to(torch.uint8)  # truncated, as ComfyUI previews


def preview_jpeg(latent: Tensor, latent_format: str, max_size: int = 512, quality: int = 80) -> bytes:
    """A JPEG of the latent's first item, upscaled 8x (nearest) and capped at ``max_size``."""
    image = Image.fromarray(latent_to_rgb(latent, latent_format).numpy())
    scale = max(1, min(8, max_size // max(image.size)))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def decoded_jpeg(images: Tensor, max_size: int = 512, quality: int = 80) -> bytes:
    """A JPEG of the first of decoded ``images`` ``[B, 3, H, W]`` (about -1..1), shrunk to fit ``max_size``
    (bilinear; never enlarged): a TAESD preview."""
    rgb = ((images[0].float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0).mul(255).to(torch.uint8)  # truncated
    image = Image.fromarray(rgb.permute(1, 2, 0).contiguous().numpy())
    image.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
