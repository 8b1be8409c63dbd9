"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

UNET_PATCH_NODES: tuple[type[Node], ...] = ()
