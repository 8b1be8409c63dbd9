"""Finding, importing and registering ComfyUI custom node packs, each in its own try.

A pack is a folder with ``__init__.py`` or a single ``.py`` file in a custom nodes folder (names ending in
``.disabled`` or starting with ``.`` or ``__`` are skipped, as ComfyUI skips them). It is imported under its own
name, as ComfyUI imports it, so its relative imports work; then its ``NODE_CLASS_MAPPINGS`` (with
``NODE_DISPLAY_NAME_MAPPINGS``) are adapted (:mod:`engine.custom_nodes.v1`) and registered, then the nodes of its
V3 extension (``comfy_entrypoint``, :mod:`engine.custom_nodes.v3`), and its ``WEB_DIRECTORY`` is remembered for
``/extensions``. A pack that fails to import is logged with its traceback
and reported; the others load. A node whose name is taken (by Loom or an earlier pack) is skipped and named in
its pack's report: packs add nodes, they never replace Loom's.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from engine.custom_nodes.compat import install
from engine.custom_nodes.compat.server import PromptServer
from engine.custom_nodes.runtime import CompatRuntime
from engine.custom_nodes.v1 import adapt
from engine.custom_nodes.v3 import adapt as adapt_v3
from engine.custom_nodes.v3 import extension_nodes
from engine.folders import Folders
from engine.registry import NodeRegistry

__all__ = ["PackReport", "find_packs", "load_packs"]

log = logging.getLogger(__name__)


@dataclass
class PackReport:
    """What loading one pack did (``GET /loom/custom_nodes``)."""

    name: str
    path: str
    status: Literal["loaded", "failed"]
    error: str = ""
    nodes: list[str] = field(default_factory=list)
    #: Nodes of the pack that were not registered, each with the reason.
    skipped: dict[str, str] = field(default_factory=dict)
    load_time: float = 0.0
    web_directory: Path | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "status": self.status, "error": self.error,
                "nodes": self.nodes, "skipped": self.skipped, "load_time": round(self.load_time, 4),
                "web_directory": str(self.web_directory) if self.web_directory else None}


def find_packs(folders: Iterable[Path]) -> list[Path]:
    """Every pack in the folders, in folder order and by name within a folder."""
    packs: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
            if entry.name.startswith((".", "__")) or entry.name.endswith(".disabled"):
                continue
            if (entry.is_dir() and (entry / "__init__.py").is_file()) or (entry.is_file() and entry.suffix == ".py"):
                packs.append(entry)
    return packs


def _module_name(pack: Path) -> str:
    return pack.stem if pack.is_file() else pack.name


def import_pack(pack: Path) -> ModuleType:
    """Import a pack under its own name (a folder as a package, so its relative imports work)."""
    name = _module_name(pack)
    if name in sys.modules:
        raise ImportError(f"a module named {name!r} is already loaded; rename the pack's folder")
    if pack.is_dir():
        spec = importlib.util.spec_from_file_location(name, pack / "__init__.py",
                                                      submodule_search_locations=[str(pack)])
    else:
        spec = importlib.util.spec_from_file_location(name, pack)
    if spec is None or spec.loader is None:
        raise ImportError(f"{pack} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _web_directory(pack: Path, module: ModuleType) -> Path | None:
    declared = getattr(module, "WEB_DIRECTORY", None)
    if not isinstance(declared, str) or not declared:
        return None
    base = pack if pack.is_dir() else pack.parent
    folder = (base / declared).resolve()
    return folder if folder.is_dir() else None


def _register_nodes(module: ModuleType, report: PackReport, registry: NodeRegistry) -> None:
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if not isinstance(mappings, Mapping):
        return
    names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
    for node_name, cls in mappings.items():
        node_name = str(node_name)
        if node_name in registry:
            report.skipped[node_name] = "a node of this name is already registered (Loom's or an earlier pack's)"
            continue
        try:
            registry.register(adapt(node_name, cls, pack=report.name, display_name=str(names.get(node_name, ""))))
        except Exception as exc:  # noqa: BLE001 - one bad node class must not lose the pack's others
            report.skipped[node_name] = f"{type(exc).__name__}: {exc}"
            continue
        report.nodes.append(node_name)


def _register_v3_nodes(module: ModuleType, report: PackReport, registry: NodeRegistry) -> None:
    """The nodes of the pack's V3 extension; a failing entrypoint or ``get_node_list`` fails the pack."""
    for cls in extension_nodes(module) or ():
        label = str(getattr(cls, "__name__", cls))
        try:
            node = adapt_v3(cls, pack=report.name)
        except Exception as exc:  # noqa: BLE001 - one bad node class must not lose the pack's others
            report.skipped[label] = f"{type(exc).__name__}: {exc}"
            continue
        if node.type_name in registry:
            report.skipped[node.type_name] = "a node of this name is already registered (Loom's or an earlier pack's)"
            continue
        try:
            registry.register(node)
        except Exception as exc:  # noqa: BLE001 - a declaration Loom refuses skips that node only
            report.skipped[node.type_name] = f"{type(exc).__name__}: {exc}"
            continue
        report.nodes.append(node.type_name)


def load_pack(pack: Path, registry: NodeRegistry) -> PackReport:
    """Import one pack and register its nodes; a failure is reported, never raised."""
    report = PackReport(_module_name(pack), str(pack), "loaded")
    start = time.perf_counter()
    try:
        module = import_pack(pack)
        _register_nodes(module, report, registry)
        _register_v3_nodes(module, report, registry)
        report.web_directory = _web_directory(pack, module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a pack's import runs arbitrary code
        report.status = "failed"
        report.error = _describe(exc)
        log.error("custom node pack %s failed to load: %s\n%s", report.name, report.error,
                  "".join(traceback.format_exception(exc)))
    report.load_time = time.perf_counter() - start
    for node_name, reason in report.skipped.items():
        log.warning("custom node pack %s: node %s not registered: %s", report.name, node_name, reason)
    return report


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] in ("comfy", "comfy_extras", "comfy_api",
                                                                          "comfy_execution", "nodes", "server"):
        text += " (a ComfyUI module Loom does not provide yet; docs/custom-nodes.md lists what it provides)"
    return text


def load_packs(folders: Iterable[Path], registry: NodeRegistry, files: Folders) -> list[PackReport]:
    """Load every pack of ``folders`` into ``registry``, installing ComfyUI's modules first; the reports."""
    packs = find_packs(folders)
    if not packs:
        return []
    runtime = CompatRuntime(files, registry)
    install(runtime)
    runtime.prompt_server = PromptServer()
    PromptServer.instance = runtime.prompt_server
    registry.custom_runtime = runtime
    reports = [load_pack(pack, registry) for pack in packs]
    registry.custom_packs.extend(reports)
    loaded = sum(report.status == "loaded" for report in reports)
    log.info("custom nodes: %d of %d packs loaded, %d nodes", loaded, len(reports),
             sum(len(report.nodes) for report in reports))
    return reports
