"""Values crossing between Loom's nodes and a pack's code.

Most values already travel as ComfyUI passes them (IMAGE, MASK, LATENT, CONDITIONING). MODEL, CLIP and VAE are
Loom's immutable handles; packs expect ComfyUI's objects with methods (``clone``, ``model_options``,
``set_model_*`` patches, ``tokenize``, ``encode``, ...). :func:`to_pack` turns what a pack's node receives into
what it expects, and :func:`from_pack` turns what it returns back into what Loom's nodes take.
"""

from __future__ import annotations

from typing import Any

__all__ = ["from_pack", "to_pack"]


def to_pack(value: Any) -> Any:
    """A value on its way into a pack's function."""
    return value


def from_pack(value: Any) -> Any:
    """A value a pack's function returned, on its way to Loom's nodes."""
    return value
