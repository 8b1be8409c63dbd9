"""``.latent`` files (safetensors), as ComfyUI writes them: reading and writing LATENT samples.

A ``.latent`` file holds one tensor ``latent_tensor`` [B,C,h,w] and an empty marker tensor
``latent_format_version_0``. Files without the marker come from old versions that stored latents
pre-scaled by the SD1 factor, so they are multiplied by 1/0.18215 when read (ComfyUI's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["read_latent_file", "write_latent_file"]

_VERSION_MARKER = "latent_format_version_0"
_LEGACY_SCALE = 1.0 / 0.18215


def write_latent_file(path: Path, samples: Tensor, metadata: Mapping[str, str]) -> None:
    """Write ``samples`` [B,C,h,w] to ``path`` with the version marker and string ``metadata``."""
    tensors = {"latent_tensor": samples.contiguous(), _VERSION_MARKER: torch.tensor([])}
    save_file(tensors, str(path), metadata=dict(metadata))


def read_latent_file(path: Path, name: str) -> Tensor:
    """The float samples of the ``.latent`` file at ``path``; ValueError naming ``name`` when it holds none."""
    tensors = load_file(str(path))
    if "latent_tensor" not in tensors:
        raise ValueError(f"{name!r} holds no 'latent_tensor'; it was not written by SaveLatent")
    scale = 1.0 if _VERSION_MARKER in tensors else _LEGACY_SCALE
    return tensors["latent_tensor"].float() * scale
