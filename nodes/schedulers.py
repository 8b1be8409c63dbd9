"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

SCHEDULER_NODES: tuple[type[Node], ...] = ()
