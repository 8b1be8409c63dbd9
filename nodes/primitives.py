"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

PRIMITIVE_NODES: tuple[type[Node], ...] = ()
