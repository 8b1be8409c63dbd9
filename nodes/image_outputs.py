"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

IMAGE_OUTPUT_NODES: tuple[type[Node], ...] = ()
