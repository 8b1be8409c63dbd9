"""Torch-backed SDK module: the guidance patches a MODEL handle carries.

A node imports this module inside ``run`` (``from engine.sdk import guidance``) and returns
``model.with_sampling_patch(guidance.RescaleCFG(multiplier))``; the patch objects come from
:mod:`engine.backend.guidance_patches` (frozen, picklable; installed into each sampling run's hooks).
"""

from __future__ import annotations

from engine.backend.flow_apply import SkipLayerGuidancePatch, SkippedBlocks
from engine.backend.guidance_patches import (
    APG,
    TCFG,
    CFGNorm,
    CFGZeroStar,
    DifferentialDiffusion,
    FreSca,
    Mahiro,
    PerpNeg,
    RescaleCFG,
)

__all__ = [
    "APG", "CFGNorm", "CFGZeroStar", "DifferentialDiffusion", "FreSca", "Mahiro", "PerpNeg", "RescaleCFG",
    "SkipLayerGuidancePatch", "SkippedBlocks", "TCFG",
]
