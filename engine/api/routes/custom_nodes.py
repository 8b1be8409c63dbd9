"""What ComfyUI custom node packs add to the API: their load reports (``/loom/custom_nodes``), their frontend
extensions (``/extensions`` lists the scripts of every pack's ``WEB_DIRECTORY``, served at
``/extensions/PACK/...``; with ``--frontend comfyui`` the frontend's own ``extensions/core/...`` modules are
served there too). Their own HTTP routes are added by engine/custom_nodes/compat/server.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from engine.api.comfyui_frontend import comfyui_static_root, file_response, static_file
from engine.api.context import ApiContext, blocking
from engine.api.operation import Param, route
from engine.api.request import json_ok
from engine.errors import PathOutsideRoot
from engine.folders import resolve_inside

_STR = {"type": "string"}


def _web_dirs(ctx: ApiContext) -> dict[str, Path]:
    return {report.name: report.web_directory for report in ctx.registry.custom_packs
            if report.status == "loaded" and report.web_directory is not None}


def extension_scripts(web_dirs: dict[str, Path]) -> list[str]:
    """The URL of every ``.js`` file under each pack's web folder, as ComfyUI lists them."""
    urls = []
    for name, folder in web_dirs.items():
        for dirpath, subdirs, files in os.walk(folder):
            subdirs.sort()
            for file in sorted(files):
                if file.endswith(".js"):
                    rel = (Path(dirpath) / file).relative_to(folder).as_posix()
                    urls.append(f"/extensions/{quote(name)}/{quote(rel)}")
    return urls


class CustomNodeRoutes:
    """``/loom/custom_nodes``, ``/extensions`` and ``/extensions/{path}``."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    @route("GET", "/loom/custom_nodes", "Each custom node pack: name, path, status (loaded or failed), error, "
           "nodes, skipped nodes with the reason, load time, web folder.", "system",
           response={"type": "array"}, prefixed=False)
    async def custom_nodes(self, request: web.Request) -> web.Response:
        return json_ok([report.as_json() for report in self.ctx.registry.custom_packs])

    @route("GET", "/extensions", "The frontend extension scripts of the custom node packs.", "system",
           response={"type": "array", "items": _STR})
    async def extensions(self, request: web.Request) -> web.Response:
        return json_ok(await blocking(extension_scripts, _web_dirs(self.ctx)))

    @route("GET", "/extensions/{path}", "A file of a custom node pack's WEB_DIRECTORY (PACK/FILE).", "frontend",
           response={"description": "The file's bytes."}, errors=(404,), prefixed=False,
           params=(Param("path", "path", _STR, required=True),))
    async def extension_file(self, request: web.Request) -> web.StreamResponse:
        pack, _, rel = request.match_info["path"].partition("/")
        folder = _web_dirs(self.ctx).get(pack)
        path: Any = None
        if folder is not None and rel:
            try:
                path = resolve_inside(folder, rel)
            except PathOutsideRoot:
                path = None
        if path is None or not path.is_file():
            path = self._frontend_file(request.match_info["path"])
        if path is None:
            return web.Response(status=404, text="404: Not Found", content_type="text/plain")
        return file_response(path, rel)

    def _frontend_file(self, rel: str) -> Path | None:
        """ComfyUI's frontend ships its own ``extensions/core/...`` modules, which packs' scripts import."""
        if self.ctx.settings.frontend != "comfyui":
            return None
        return static_file(comfyui_static_root(self.ctx.settings), f"extensions/{rel}")
