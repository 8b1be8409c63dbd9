"""The informational routes ComfyUI's frontend asks for (issue 20): translations, node replacements, global
subgraphs, custom-node templates, the model browser's ``/experiment/models``, the ``/internal/*`` helpers, and
the workflow templates (``/templates/*``) and node docs (``/docs/*``) of ComfyUI's data packages when they are
installed (engine/api/comfyui_packages.py).
Shapes are ComfyUI's (facts of its server and internal routes); Loom has no custom-node translations, node
replacements, subgraph blueprints or custom-node templates yet, so those answer empty, as ComfyUI does without
custom nodes. None of them imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.api.comfyui_frontend import file_response
from engine.api.comfyui_packages import docs_root, find_file, template_roots
from engine.api.context import ApiContext, blocking
from engine.api.errors import ApiError
from engine.api.operation import Param, route
from engine.api.request import json_ok
from engine.folders import MODEL_EXTENSIONS, MODEL_FOLDERS, Folders

_STR = {"type": "string"}
_OBJECT = {"type": "object"}
_ARRAY = {"type": "array"}
#: Model kinds the model browser leaves out (ComfyUI's list).
_HIDDEN_KINDS = ("configs", "custom_nodes")
_FILE_KINDS = ("input", "output", "temp")
_PACKAGE_FILE = {"description": "The file's bytes (JSON for the indexes and workflows)."}
_PACKAGE_FILE_TYPES = ("application/json", "image/webp", "image/png", "image/jpeg", "text/markdown", "text/plain")


def model_folders(folders: Folders) -> list[dict[str, Any]]:
    """``/experiment/models``: each model kind with its existing folders (in model-root order) and endings."""
    return [{"name": kind, "folders": [str(path) for path in folders.model_dirs(kind)],
             "extensions": sorted(MODEL_EXTENSIONS)}
            for kind in MODEL_FOLDERS if kind not in _HIDDEN_KINDS]


def _visible(name: str) -> bool:
    return not name.startswith(".")


def model_files(folders: Folders, kind: str) -> list[dict[str, Any]]:
    """``/experiment/models/{kind}``: every model file (hidden ones and .git left out), with the index of its
    folder in :func:`model_folders`' list, its times and size."""
    out: list[dict[str, Any]] = []
    for index, directory in enumerate(folders.model_dirs(kind)):
        for dirpath, subdirs, names in os.walk(directory, followlinks=True):
            subdirs[:] = sorted(d for d in subdirs if _visible(d) and d != ".git")
            for name in sorted(names):
                if not _visible(name) or not name.lower().endswith(MODEL_EXTENSIONS):
                    continue
                path = Path(dirpath) / name
                try:
                    stat = path.stat()
                except OSError:
                    continue
                out.append({"name": path.relative_to(directory).as_posix(), "pathIndex": index,
                            "modified": stat.st_mtime, "created": stat.st_ctime, "size": stat.st_size})
    return out


def recent_files(folders: Folders, kind: str) -> list[str]:
    """``/internal/files/{kind}``: the visible files directly in the input, output or temp folder, newest first."""
    root = folders.root(kind)
    if not root.is_dir():
        return []
    entries = [entry for entry in os.scandir(root) if entry.is_file() and _visible(entry.name)]
    entries.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    return [entry.name for entry in entries]


class ComfyFrontendRoutes:
    """What ComfyUI's frontend reads besides the core API (see the module docstring)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.template_roots = template_roots()
        docs = docs_root()
        self.docs_roots = (docs,) if docs is not None else ()

    @route("GET", "/i18n", "Translations of custom nodes by locale (none in Loom: {}).", "frontend", response=_OBJECT)
    async def i18n(self, request: web.Request) -> web.Response:
        return json_ok({})

    @route("GET", "/node_replacements", "Replacements for node types that were renamed (none: {}).", "frontend",
           response=_OBJECT)
    async def node_replacements(self, request: web.Request) -> web.Response:
        return json_ok({})

    @route("GET", "/global_subgraphs", "Subgraph blueprints offered to every workflow (none: {}).", "frontend",
           response=_OBJECT)
    async def global_subgraphs(self, request: web.Request) -> web.Response:
        return json_ok({})

    @route("GET", "/workflow_templates", "Example workflows of custom nodes, by node pack (none: {}).", "frontend",
           response=_OBJECT)
    async def workflow_templates(self, request: web.Request) -> web.Response:
        return json_ok({})

    @route("GET", "/experiment/models", "Model kinds with their folders and file endings (the model browser).",
           "models", response=_ARRAY)
    async def experiment_models(self, request: web.Request) -> web.Response:
        return json_ok(await blocking(model_folders, self.ctx.folders))

    @route("GET", "/experiment/models/{folder}", "The model files of one kind: name, pathIndex, modified, "
           "created, size.", "models", response=_ARRAY, errors=(404,),
           params=(Param("folder", "path", _STR, required=True),))
    async def experiment_model_files(self, request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        if kind not in MODEL_FOLDERS or kind in _HIDDEN_KINDS:
            raise ApiError(404, "not_found", "Unknown model folder", f"{kind!r} is not one of "
                           f"{', '.join(k for k in MODEL_FOLDERS if k not in _HIDDEN_KINDS)}")
        return json_ok(await blocking(model_files, self.ctx.folders, kind))

    @route("GET", "/internal/folder_paths", "Every model kind with its folders.", "models", response=_OBJECT,
           prefixed=False)
    async def folder_paths(self, request: web.Request) -> web.Response:
        folders = self.ctx.folders
        return json_ok({kind: [str(path) for path in folders.model_dirs(kind)] for kind in MODEL_FOLDERS})

    @route("GET", "/internal/files/{directory_type}", "The files of the input, output or temp folder, newest "
           "first.", "files", response=_ARRAY, errors=(400,), prefixed=False,
           params=(Param("directory_type", "path", _STR, required=True),))
    async def internal_files(self, request: web.Request) -> web.Response:
        kind = request.match_info["directory_type"]
        if kind not in _FILE_KINDS:
            raise ApiError(400, "invalid_directory_type", "Invalid directory type",
                           f"{kind!r}: use one of {', '.join(_FILE_KINDS)}")
        return json_ok(await blocking(recent_files, self.ctx.folders, kind))

    @route("GET", "/internal/logs", "The server log as text (Loom logs to its console: empty).", "system",
           response=_STR, prefixed=False)
    async def logs(self, request: web.Request) -> web.Response:
        return json_ok("")

    @route("GET", "/internal/logs/raw", "Log entries and the terminal size (Loom: none, 80 x 24).", "system",
           response=_OBJECT, prefixed=False)
    async def logs_raw(self, request: web.Request) -> web.Response:
        return json_ok({"entries": [], "size": {"cols": 80, "rows": 24}})

    @route("GET", "/templates/{path}", "A file of the installed workflow templates: index.json (and per locale), "
           "index_logo.json, <name>.json, thumbnails, logos. Plain-text 404 when missing.", "frontend",
           response=_PACKAGE_FILE, response_types=_PACKAGE_FILE_TYPES, errors=(404,), prefixed=False,
           params=(Param("path", "path", _STR, required=True),))
    async def template_file(self, request: web.Request) -> web.StreamResponse:
        return _package_file(self.template_roots, request.match_info["path"])

    @route("GET", "/docs/{path}", "A file of the installed node docs: <Node>/<locale>.md and its pictures. "
           "Plain-text 404 when missing.", "frontend", response=_PACKAGE_FILE, response_types=_PACKAGE_FILE_TYPES,
           errors=(404,), prefixed=False, params=(Param("path", "path", _STR, required=True),))
    async def docs_file(self, request: web.Request) -> web.StreamResponse:
        return _package_file(self.docs_roots, request.match_info["path"])


def _package_file(roots: tuple[Path, ...], rel: str) -> web.StreamResponse:
    """The file, or a plain-text 404: the frontend reads a template index only when it is JSON."""
    path = find_file(roots, rel)
    if path is None:
        return web.Response(status=404, text="404: Not Found", content_type="text/plain")
    return file_response(path, rel)
