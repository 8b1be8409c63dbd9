"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

COMPOSITING_NODES: tuple[type[Node], ...] = ()
