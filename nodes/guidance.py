"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

GUIDANCE_NODES: tuple[type[Node], ...] = ()
