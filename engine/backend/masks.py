"""MASK arithmetic: shapes, solid masks, inverting, thresholding, growing and converting to images.

A MASK is float ``[B, H, W]`` in 0..1 (1 = selected: regenerate when inpainting); nodes also accept
``[H, W]`` and ``[B, 1, H, W]``. IMAGE is float ``[B, H, W, C]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["grow_binary_mask", "grow_mask", "image_channel", "invert_mask", "mask_3d", "mask_4d", "mask_to_image",
           "solid_mask", "threshold_mask"]


def mask_3d(mask: Tensor) -> Tensor:
    """A MASK of any accepted rank as float [B, H, W]."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1])).float()


def mask_4d(mask: Tensor) -> Tensor:
    """A MASK ([H, W], [B, H, W] or [B, 1, H, W]) as float [B, 1, H, W]."""
    return mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()


def solid_mask(value: float, width: int, height: int) -> Tensor:
    """One ``[1, height, width]`` mask of ``value`` everywhere."""
    return torch.full((1, height, width), value, dtype=torch.float32)


def invert_mask(mask: Tensor) -> Tensor:
    """``1 - mask`` as [B, H, W]: what was not selected."""
    return 1.0 - mask_3d(mask)


def threshold_mask(mask: Tensor, value: float) -> Tensor:
    """1 where ``mask`` is above ``value``, else 0, as [B, H, W]."""
    return (mask_3d(mask) > value).float()


def mask_to_image(mask: Tensor) -> Tensor:
    """A grey IMAGE [B, H, W, 3]: the mask in all three channels."""
    return mask_3d(mask)[..., None].expand(-1, -1, -1, 3).contiguous()


def image_channel(image: Tensor, index: int) -> Tensor:
    """Channel ``index`` of an IMAGE [B, H, W, C] as a float mask [B, H, W]."""
    return image[..., index].float().contiguous()


def _neighbourhood(mask: Tensor, tapered: bool) -> Tensor:
    """The 3x3 neighbours of every pixel, [9 or 5, B, H, W]; edges repeat (ComfyUI's reflect mode)."""
    height, width = mask.shape[-2:]
    padded = F.pad(mask[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if not (tapered and dy and dx)]
    return torch.stack([padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] for dy, dx in offsets])


def grow_mask(mask: Tensor, expand: int, tapered_corners: bool) -> Tensor:
    """Grey dilation (``expand`` > 0) or erosion (< 0), one 3x3 pass per pixel of ``expand``.

    With ``tapered_corners`` the footprint is a cross (corners grow rounder), else a full square.
    """
    out = mask_3d(mask)
    for _ in range(abs(expand)):
        around = _neighbourhood(out, tapered_corners)
        out = around.amax(dim=0) if expand > 0 else around.amin(dim=0)
    return out


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
