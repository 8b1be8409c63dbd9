"""(being written)"""

from __future__ import annotations

from engine.sdk import Node

LATENT_TRANSFORM_NODES: tuple[type[Node], ...] = ()
