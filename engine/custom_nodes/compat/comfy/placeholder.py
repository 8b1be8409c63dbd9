"""What the ``comfy`` modules that Loom provides only as importable names (``comfy.sd``,
``comfy.supported_models``, ``comfy.model_detection``) answer for every symbol: an error naming it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def missing_symbols(module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that refuses every public name of ``module``."""
    def refuse(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{module}.{name} is not provided by Loom yet (docs/custom-nodes.md lists what is)")
    return refuse
