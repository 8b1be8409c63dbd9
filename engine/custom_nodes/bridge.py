"""Values crossing between Loom's nodes and a pack's code.

Most values already travel as ComfyUI passes them (IMAGE, MASK, LATENT, CONDITIONING). MODEL, CLIP and VAE are
Loom's immutable handles; packs expect ComfyUI's objects with methods (``clone``, ``model_options``,
``set_model_*`` patches, ``tokenize``, ``encode``, ...). :func:`to_pack` wraps a handle a pack's node receives in
:class:`~engine.custom_nodes.model_objects.ComfyModel`, :class:`~engine.custom_nodes.clip_objects.ComfyClip` or
:class:`~engine.custom_nodes.vae_objects.ComfyVae`, and :func:`from_pack` turns such a wrapper a pack returns
back into a handle (with what the pack recorded on it: sampling functions, UNet patches, the CLIP layer).
Anything else passes through unchanged. Torch-free at import.
"""

from __future__ import annotations

from typing import Any

from engine.custom_nodes.clip_objects import ComfyClip
from engine.custom_nodes.model_objects import ComfyModel
from engine.custom_nodes.vae_objects import ComfyVae
from engine.models.handles import ClipHandle, ModelHandle, VaeHandle

__all__ = ["from_pack", "to_pack"]


def to_pack(value: Any) -> Any:
    """A value on its way into a pack's function: MODEL, CLIP and VAE handles as ComfyUI's objects."""
    if isinstance(value, ModelHandle):
        return ComfyModel(value)
    if isinstance(value, ClipHandle):
        return ComfyClip(value)
    if isinstance(value, VaeHandle):
        return ComfyVae(value)
    return value


def from_pack(value: Any) -> Any:
    """A value a pack's function returned, on its way to Loom's nodes: wrappers back to handles."""
    if isinstance(value, ComfyModel | ComfyClip):
        return value.to_handle()
    if isinstance(value, ComfyVae):
        return value.handle
    return value
