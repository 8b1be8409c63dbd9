"""``comfy_api.latest``: what V3 packs import (``from comfy_api.latest import ComfyExtension, io, ui``).

* :class:`ComfyExtension`: the object a pack's ``comfy_entrypoint()`` returns; Loom awaits its ``on_load()``
  and ``get_node_list()`` when the pack loads (:func:`engine.custom_nodes.v3.extension_nodes`);
* ``io`` (alias ``IO``): node declarations (:mod:`._io`);
* ``ui`` (alias ``UI``): what a node shows in the UI (:mod:`._ui`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from engine.custom_nodes.compat.comfy_api.latest import _io as io
from engine.custom_nodes.compat.comfy_api.latest import _ui as ui

__all__ = ["IO", "UI", "ComfyExtension", "io", "ui"]

IO = io
UI = ui


class ComfyExtension(ABC):
    """A V3 pack's extension: the nodes it adds, and a hook run once when it loads."""

    async def on_load(self) -> None:  # noqa: B027 - an optional hook, empty unless a pack overrides it
        """Called once when the pack loads, before :meth:`get_node_list`; set up shared resources here."""

    @abstractmethod
    async def get_node_list(self) -> list[type[Any]]:
        """The pack's node classes (subclasses of ``io.ComfyNode``)."""
