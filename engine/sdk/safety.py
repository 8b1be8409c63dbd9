"""Torch-backed SDK module: Safe Latent Diffusion as a MODEL sampling patch.

A node imports this module inside ``run`` (``from engine.sdk import safety``). The maths is in
:mod:`engine.backend.sld`; this module encodes the safety concept with the node's CLIP and wraps it
with the settings into the patch a MODEL handle carries.
"""

from __future__ import annotations

from engine.backend.sld import PRESETS, SafeLatentDiffusionPatch, SafetySettings
from engine.context import RunContext
from engine.models.handles import ClipHandle, ModelHandle
from engine.sdk import ops

__all__ = ["PRESETS", "SafeLatentDiffusionPatch", "SafetySettings", "settings_for", "with_safety_guidance"]


def settings_for(preset: str, custom: SafetySettings) -> SafetySettings:
    """The preset's settings (diffusers' SafetyConfig), or ``custom`` for the preset "custom"."""
    if preset == "custom":
        return custom
    return PRESETS[preset]


def with_safety_guidance(ctx: RunContext, model: ModelHandle, clip: ClipHandle, concept: str,
                         settings: SafetySettings) -> ModelHandle:
    """``model`` with Safe Latent Diffusion away from ``concept`` (encoded with ``clip``) in every run."""
    encoder = ctx.models.text_encoder(clip)
    tokens = encoder.tokenize(concept, embedding_lookup=ops.embedding_lookup(ctx.folders))
    conditioning = ops.encode_text(ctx, clip, tokens)
    return model.with_sampling_patch(SafeLatentDiffusionPatch(conditioning, settings))
