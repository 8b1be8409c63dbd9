"""Decoded image arrays <-> IMAGE / MASK tensors.

:mod:`engine.images` decodes files into numpy float32 arrays in 0..1 (``rgb [H, W, 3]`` and
``alpha [H, W]`` or None per frame) and encodes arrays ``[H, W, C]`` as PNG; these functions turn
them into ComfyUI's tensors and back: IMAGE float ``[B, H, W, C]``, MASK float ``[B, H, W]``. A mask
made from alpha is 1 where the pixel was transparent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Frame", "channel_mask", "frames_to_tensors", "image_to_array"]

#: One decoded frame: ``(rgb [H, W, 3], alpha [H, W] or None)``.
Frame = tuple[np.ndarray, np.ndarray | None]

_CHANNELS = ("red", "green", "blue")


def _transparency(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    return 1.0 - alpha if alpha is not None else np.zeros(rgb.shape[:2], dtype=np.float32)


def frames_to_tensors(frames: Sequence[Frame]) -> tuple[Tensor, Tensor]:
    """``(IMAGE [B, H, W, 3], MASK [B, H, W])`` of frames of one size; the mask is 1 where transparent."""
    image = torch.from_numpy(np.stack([rgb for rgb, _ in frames])).contiguous()
    masks = np.stack([_transparency(rgb, alpha) for rgb, alpha in frames]).astype(np.float32)
    return image, torch.from_numpy(masks).contiguous()


def channel_mask(frame: Frame, channel: str) -> Tensor:
    """One channel (``alpha``, ``red``, ``green``, ``blue``) of a frame as a MASK ``[1, H, W]``; alpha is inverted."""
    rgb, alpha = frame
    values = _transparency(rgb, alpha) if channel == "alpha" else rgb[..., _CHANNELS.index(channel)]
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None]


def image_to_array(image: Tensor) -> np.ndarray:
    """One IMAGE item ``[H, W, C]`` as a float32 numpy array on the CPU (for encoding)."""
    return image.detach().to(device="cpu", dtype=torch.float32).numpy()
