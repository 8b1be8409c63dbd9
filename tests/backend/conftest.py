"""Shared helpers for the backend tests.

VAE reference conversion: diffusers (an independent implementation of the same networks) names its
parameters differently from the original LDM checkpoints. The functions below map a diffusers
``state_dict`` to LDM checkpoint names; the tests load the result into Loom's modules with
``strict=True`` and compare outputs, so the mapping itself is the reference for the key layout.
They were written for these tests from the two naming schemes (no converter code was copied). The
UNet's mapping is engine/models/convert_diffusers.py (LoRA loading uses it too).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from engine.models.convert_diffusers import diffusers_vae_key_to_ldm
from tests.support.data import SD15_CHECKPOINT_KEYS


def diffusers_vae_to_ldm(
    state_dict: Mapping[str, Tensor], levels: int, conv_attention: bool = True
) -> dict[str, Tensor]:
    """Rename a diffusers ``AutoencoderKL`` state dict to LDM ``first_stage_model.`` names (without the
    prefix). ``conv_attention`` reshapes the mid-block attention matrices to ``[C, C, 1, 1]`` as SD
    checkpoints store them; False keeps them 2-D (the layout of some converted files)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = diffusers_vae_key_to_ldm(key, levels)
        if conv_attention and ".attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[new] = value
    return out


def read_reference_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """Names (prefix removed) and shapes of one component of the real SD1.5 checkpoint listing
    (tests/data/sd15-checkpoint-keys.tsv).

    The TSV has one row per tensor: ``name<TAB>dtype<TAB>[d0, d1, ...]``.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for line in SD15_CHECKPOINT_KEYS.read_text().splitlines():
        name, _dtype, shape = line.split("\t")
        if name.startswith(prefix):
            dims = shape.strip().strip("[]")
            shapes[name[len(prefix):]] = tuple(int(d) for d in dims.split(",") if d.strip())
    return shapes


def randomize_norms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every norm layer non-trivial affine parameters, so a swapped norm cannot go unnoticed."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, torch.nn.GroupNorm | torch.nn.LayerNorm) and sub.weight is not None:
                sub.weight.copy_(1 + 0.2 * torch.randn(sub.weight.shape, generator=generator))
                sub.bias.copy_(0.2 * torch.randn(sub.bias.shape, generator=generator))


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())
