"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

IMAGE_FILTER_NODES: tuple[type[Node], ...] = ()
