"""``comfy.supported_models``: importable so that packs which import it at load time load; Loom provides none of its
symbols yet, and using one raises an error naming it (docs/custom-nodes.md)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(f"comfy.supported_models.{name} is not provided by Loom yet "
                         "(docs/custom-nodes.md lists what is)")
