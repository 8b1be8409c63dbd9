"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

LATENT_OPERATION_NODES: tuple[type[Node], ...] = ()
