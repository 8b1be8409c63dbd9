"""An IMAGE batch as the frames of an animation: one float array per frame and each frame's duration.

The encoders (animated WebP, APNG) live in :mod:`engine.images`; this module only turns the tensor
``[B, H, W, C]`` into per-frame numpy arrays ``[H, W, C]`` on the CPU and an fps into milliseconds.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["frame_arrays", "frame_duration_ms"]


def frame_duration_ms(fps: float) -> int:
    """How long each frame shows, in whole milliseconds (``int(1000 / fps)``, as ComfyUI writes it)."""
    if fps <= 0:
        raise ValueError(f"fps must be above 0, got {fps}")
    return int(1000.0 / fps)


def frame_arrays(images: Tensor) -> list[np.ndarray]:
    """Each item of an IMAGE batch as a float32 ``[H, W, C]`` array on the CPU, in batch order."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"an animation needs an IMAGE batch [B, H, W, C] with B >= 1, got shape {tuple(images.shape)}")
    frames = images.detach().to(device="cpu", dtype=torch.float32)
    return [frame.numpy() for frame in frames]
