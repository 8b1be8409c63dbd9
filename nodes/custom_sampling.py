"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

CUSTOM_SAMPLING_NODES: tuple[type[Node], ...] = ()
