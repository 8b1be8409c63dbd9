"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

SAFETY_NODES: tuple[type[Node], ...] = ()
