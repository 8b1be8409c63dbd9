"""Our own modules with the names ComfyUI custom node packs import, written from ComfyUI's interface (facts
only; ComfyUI is GPL) onto Loom's engine.

:func:`install` puts them into ``sys.modules`` under ComfyUI's names, only when custom nodes load, so a Loom
without packs never has a module called ``nodes`` or ``comfy``. A symbol we do not provide raises
ImportError/AttributeError naming it; the pack loader reports the pack as failed with that message.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from engine.custom_nodes.runtime import CompatRuntime, set_active

__all__ = ["MODULES", "install", "installed_names"]

#: ComfyUI's module name -> ours (parents before children, so ``import comfy.utils`` finds ``comfy`` first).
MODULES: dict[str, str] = {
    "folder_paths": "engine.custom_nodes.compat.folder_paths",
    "comfy": "engine.custom_nodes.compat.comfy",
    "comfy.utils": "engine.custom_nodes.compat.comfy.utils",
    "comfy.model_management": "engine.custom_nodes.compat.comfy.model_management",
    "comfy.samplers": "engine.custom_nodes.compat.comfy.samplers",
    "comfy.sd": "engine.custom_nodes.compat.comfy.sd",
    "comfy.supported_models": "engine.custom_nodes.compat.comfy.supported_models",
    "comfy.model_detection": "engine.custom_nodes.compat.comfy.model_detection",
    "comfy_api": "engine.custom_nodes.compat.comfy_api",
    "comfy_api.latest": "engine.custom_nodes.compat.comfy_api.latest",
    "comfy_api.latest._io": "engine.custom_nodes.compat.comfy_api.latest._io",
    "comfy_api.latest._ui": "engine.custom_nodes.compat.comfy_api.latest._ui",
    "comfy_api.v0_0_2": "engine.custom_nodes.compat.comfy_api.latest",
    "nodes": "engine.custom_nodes.compat.nodes",
    "server": "engine.custom_nodes.compat.server",
}


def install(runtime: CompatRuntime) -> list[ModuleType]:
    """Make ``runtime`` the active one and put the compatibility modules into ``sys.modules``.

    Loom's built-in nodes are a package called ``nodes`` too: ComfyUI's ``nodes`` takes its place in
    ``sys.modules`` but keeps its path and falls back to its attributes (:func:`_share_loom_nodes`), so Loom's
    own ``import nodes.x`` and ``from nodes import register_builtin_nodes`` go on working.
    """
    set_active(runtime)
    modules = []
    for name, ours in MODULES.items():
        module = importlib.import_module(ours)
        if name == "nodes":
            _share_loom_nodes(module)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        modules.append(module)
    return modules


def installed_names() -> list[str]:
    """ComfyUI's module names that are ours in ``sys.modules`` now."""
    return [name for name, ours in MODULES.items() if getattr(sys.modules.get(name), "__name__", "") == ours]


def _share_loom_nodes(compat_nodes: ModuleType) -> None:
    loom = sys.modules.get("nodes")
    if loom is compat_nodes:
        return
    if loom is None:
        try:
            loom = importlib.import_module("nodes")
        except ImportError:
            return
    compat_nodes.__path__ = list(getattr(loom, "__path__", []))
    setattr(compat_nodes, "loom_package", loom)  # noqa: B010 - a module attribute set from outside
