"""NodeRegistry: the only way a node type name becomes code. An instance, never a module global."""

from __future__ import annotations

import logging
from typing import Any

from engine.folders import Folders
from engine.node import Node, check_declaration

log = logging.getLogger(__name__)


class NodeRegistry:
    """Registered node classes by type name, plus accepted aliases (LoadCheckpoint, ...)."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Node]] = {}
        self._aliases: dict[str, str] = {}
        #: The ComfyUI custom node packs loaded into this registry, as reported by
        #: engine/custom_nodes/packs.py (PackReport), and the runtime they share (CompatRuntime), if any.
        self.custom_packs: list[Any] = []
        self.custom_runtime: Any = None

    def register(self, cls: type[Node]) -> type[Node]:
        """Add a node class (usable as a decorator). Refuses duplicates and bad declarations."""
        if not cls.__dict__.get("type_name"):  # its own name, not one a registered base class was given
            cls.type_name = cls.__name__
        check_declaration(cls)
        for name in (cls.type_name, *cls.aliases):
            if name in self._classes or name in self._aliases:
                raise ValueError(f"node type {name!r} is already registered")
        self._classes[cls.type_name] = cls
        for alias in cls.aliases:
            self._aliases[alias] = cls.type_name
        return cls

    def get(self, name: str) -> type[Node] | None:
        """The class for a type name or alias, or None."""
        cls = self._classes.get(name)
        if cls is None and name in self._aliases:
            cls = self._classes[self._aliases[name]]
        return cls

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def names(self) -> list[str]:
        return sorted(self._classes)

    def node_info(self, cls: type[Node], folders: Folders) -> dict[str, Any]:
        """One entry of ``/object_info``, in ComfyUI's exact schema."""
        required = {s.name: s.spec(folders) for s in cls.inputs if not s.optional}
        optional = {s.name: s.spec(folders) for s in cls.inputs if s.optional}
        inputs: dict[str, Any] = {"required": required}
        if optional:
            inputs["optional"] = optional
        order: dict[str, list[str]] = {"required": list(required)}
        if optional:
            order["optional"] = list(optional)
        description = cls.description or (cls.__doc__ or "").strip()
        flags = {flag: True for flag in ("deprecated", "experimental") if getattr(cls, flag)}
        return {
            "input": inputs,
            "input_order": order,
            "output": [o.type for o in cls.outputs],
            "output_is_list": [o.is_list for o in cls.outputs],
            "output_name": [o.label for o in cls.outputs],
            "output_tooltips": [o.tooltip for o in cls.outputs],
            "name": cls.type_name,
            "display_name": cls.display_name or cls.type_name,
            "description": description,
            "python_module": cls.python_module,
            "category": cls.category,
            "output_node": cls.output_node,
            **flags,
        }

    def object_info(self, folders: Folders) -> dict[str, Any]:
        """``/object_info``: every class; a class whose schema fails is logged and skipped."""
        info: dict[str, Any] = {}
        for name in self.names():
            try:
                info[name] = self.node_info(self._classes[name], folders)
            except OSError as exc:
                log.warning("skipping %s in /object_info: %s", name, exc)
        return info
