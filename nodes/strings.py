"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

STRING_NODES: tuple[type[Node], ...] = ()
