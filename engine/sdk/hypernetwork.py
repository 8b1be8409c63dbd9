"""Torch-backed SDK module: hypernetwork files as MODEL sampling patches.

HypernetworkLoader imports this inside ``run`` (``from engine.sdk import hypernetwork``) and returns
``model.with_sampling_patch(hypernetwork.hypernetwork_patch(path, strength))``. Files are parsed by
:mod:`engine.models.hypernetwork` (cached by path, size and mtime); the patch is
:class:`engine.backend.hypernetwork.HypernetworkPatch`.
"""

from __future__ import annotations

from pathlib import Path

from engine.backend.hypernetwork import Hypernetwork, HypernetworkPatch
from engine.models.handles import FileRef
from engine.models.hypernetwork import HypernetworkFileError, read_hypernetwork

__all__ = ["Hypernetwork", "HypernetworkFileError", "HypernetworkPatch", "hypernetwork_patch", "read_hypernetwork"]


def hypernetwork_patch(path: Path, strength: float) -> HypernetworkPatch:
    """The sampling patch of the hypernetwork file at ``path`` with ``strength``."""
    return HypernetworkPatch(read_hypernetwork(FileRef.of(path)), float(strength))
