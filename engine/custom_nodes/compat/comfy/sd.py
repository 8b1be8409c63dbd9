"""``comfy.sd``: importable so that packs which import it at load time load; Loom provides none of its
symbols yet, and using one raises an error naming it (docs/custom-nodes.md)."""

from engine.custom_nodes.compat.comfy.placeholder import missing_symbols

__getattr__ = missing_symbols("comfy.sd")
