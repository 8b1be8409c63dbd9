"""Torch-free handles for CLIP vision and style model files (CLIP_VISION and STYLE_MODEL edges)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.handles import FileRef

__all__ = ["ClipVisionHandle", "StyleModelHandle"]


@dataclass(frozen=True)
class ClipVisionHandle:
    """CLIP_VISION: a CLIP vision tower file (transformers or OpenCLIP key layout); ``label`` names its kind;
    ``prefix`` is where an OpenCLIP tower sits inside a larger file (SD2 unCLIP: ``embedder.model.visual.``)."""

    file: FileRef
    label: str = ""
    prefix: str = ""


@dataclass(frozen=True)
class StyleModelHandle:
    """STYLE_MODEL: a style model file (T2I-Adapter style or Flux Redux)."""

    file: FileRef
    label: str = ""
