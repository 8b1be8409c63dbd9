"""Latent previews: a cheap linear latent -> RGB projection (or a TAESD decode), encoded as a small JPEG.

The projection is a per-family channels x 3 matrix (plus bias; ComfyUI's factors) that approximates what the
VAE would decode, good enough to watch a sampler converge. Previews are sent only to clients that ask for them.
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
    "sd3": (((-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
             (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
             (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
             (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
             (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
             (-0.1448, -0.1463, -0.1189)), (0.2394, 0.2135, 0.1925)),
    "flux": (((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
              (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
              (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
              (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
              (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
              (-0.1262, -0.0982, -0.0778)), (-0.0329, -0.0718, -0.0851)),
}


def latent_to_rgb(latent: Tensor, latent_format: str) -> Tensor:
    """The first item of a model-space latent [B, C, h, w] (4 or 16 channels) as RGB uint8 [h, w, 3]."""
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
