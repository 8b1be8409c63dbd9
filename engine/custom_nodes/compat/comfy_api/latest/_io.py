"""``comfy_api.latest.io``: the V3 declarations a pack uses (``io.ComfyNode``, ``io.Schema``, ``io.Int.Input``,
``io.NodeOutput``, ``io.Hidden``, ...), gathered from :mod:`._io_types`, :mod:`._io_widgets` and :mod:`._io_node`.

A name ComfyUI has and Loom does not (dynamic inputs such as ``io.Autogrow``, ``io.MatchType``,
``io.DynamicCombo``) raises AttributeError naming it, so the pack is reported as failed with that message.
"""

from __future__ import annotations

from typing import Any

from engine.custom_nodes.compat.comfy_api.latest._io_node import (
    ComfyNode,
    Hidden,
    HiddenHolder,
    NodeOutput,
    Schema,
)
from engine.custom_nodes.compat.comfy_api.latest._io_types import (
    AnyType,
    Audio,
    Clip,
    ClipVision,
    ClipVisionOutput,
    ComfyType,
    ComfyTypeI,
    ComfyTypeIO,
    Conditioning,
    ControlAfterGenerate,
    ControlNet,
    Custom,
    FolderType,
    Gligen,
    Guider,
    Image,
    Input,
    Latent,
    Mask,
    Model,
    Noise,
    NumberDisplay,
    Output,
    Sampler,
    Sigmas,
    StyleModel,
    UploadType,
    UpscaleModel,
    Vae,
    Video,
    WidgetInput,
    comfytype,
)
from engine.custom_nodes.compat.comfy_api.latest._io_widgets import Boolean, Combo, Float, Int, String

__all__ = [
    "AnyType", "Audio", "Boolean", "Clip", "ClipVision", "ClipVisionOutput", "Combo", "ComfyNode", "ComfyType",
    "ComfyTypeI", "ComfyTypeIO", "Conditioning", "ControlAfterGenerate", "ControlNet", "Custom", "Float",
    "FolderType", "Gligen", "Guider", "Hidden", "HiddenHolder", "Image", "Input", "Int", "Latent", "Mask", "Model",
    "NodeOutput", "Noise", "NumberDisplay", "Output", "Sampler", "Schema", "Sigmas", "String", "StyleModel",
    "UploadType", "UpscaleModel", "Vae", "Video", "WidgetInput", "comfytype",
]


def __getattr__(name: str) -> Any:
    """A clear error for ComfyUI's V3 names Loom does not provide (PEP 562)."""
    raise AttributeError(f"module 'comfy_api.latest.io' has no attribute {name!r}: Loom provides the widget, "
                         "model and data types, Custom, Schema, ComfyNode, NodeOutput and Hidden, not dynamic "
                         "inputs (docs/custom-nodes.md)")
