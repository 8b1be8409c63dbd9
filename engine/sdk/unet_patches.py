"""Torch-backed SDK module: the UNet patches a MODEL handle carries.

A node imports this module inside ``run`` (``from engine.sdk import unet_patches``) and returns
``model.with_sampling_patch(unet_patches.FreeUPatch(...))``; the patch objects come from
:mod:`engine.backend.unet_patches` and :mod:`engine.backend.attention_guidance` (frozen, picklable;
installed into each sampling run's hooks, see the UNet's patch points in :mod:`engine.backend.unet`).
"""

from __future__ import annotations

from engine.backend.attention_guidance import PerturbedAttentionGuidancePatch, SelfAttentionGuidancePatch
from engine.backend.unet_patches import (
    AttentionMultiplyPatch,
    DownscalePatch,
    FreeUPatch,
    HyperTilePatch,
    TomePatch,
    TorchCompilePatch,
)

__all__ = [
    "AttentionMultiplyPatch", "DownscalePatch", "FreeUPatch", "HyperTilePatch", "PerturbedAttentionGuidancePatch",
    "SelfAttentionGuidancePatch", "TomePatch", "TorchCompilePatch",
]
