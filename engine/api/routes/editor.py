"""The graph editor: its static files, the workflow it opens first, and the ``/loom/workflow/*``
conversions between the editor and API formats. Served without the ``/api`` prefix."""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from typing import Any

from aiohttp import web

from engine.api.comfyui_frontend import comfyui_static_root, file_response
from engine.api.context import ApiContext, blocking
from engine.api.errors import ApiError
from engine.api.operation import Param, route
from engine.api.request import json_ok, read_json
from engine.errors import PathOutsideRoot, ValidationFailed
from engine.folders import resolve_inside
from engine.registry import NodeRegistry
from engine.workflow import ui_to_api
from engine.workflow_layout import api_to_ui

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".svg": "image/svg+xml",
    ".wasm": "application/wasm", ".png": "image/png", ".ico": "image/x-icon",
    ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf",
}
NOT_INSTALLED_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Loom</title></head>
<body><h1>Loom is running</h1>
<p>The graph editor is not installed in the frontend folder. The HTTP API is available; see
<a href="/openapi.json">/openapi.json</a>.</p></body></html>
"""
_NO_CACHE = {"Cache-Control": "no-cache"}
_STR = {"type": "string"}
_OBJECT = {"type": "object"}


class EditorRoutes:
    """The editor's page and files, and the conversions it asks the server for."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.comfyui_root = comfyui_static_root(ctx.settings) if ctx.settings.frontend == "comfyui" else None

    @route("GET", "/", "The graph editor (index.html of the frontend folder; ComfyUI's with --frontend comfyui).",
           "frontend", response=_STR, response_types=("text/html",), prefixed=False)
    async def index(self, request: web.Request) -> web.StreamResponse:
        if self.comfyui_root is not None:
            return file_response(self.comfyui_root / "index.html", "index.html")
        index = self.ctx.settings.frontend_dir / "index.html"
        if index.is_file():
            return web.FileResponse(index, headers={**_NO_CACHE, "Content-Type": STATIC_TYPES[".html"]})
        return web.Response(text=NOT_INSTALLED_HTML, content_type="text/html", headers=_NO_CACHE)

    @route("GET", "/frontend/{path}", "The editor's static files.", "frontend",
           response={"type": "string", "format": "binary"},
           response_types=tuple(dict.fromkeys(t.split(";")[0] for t in STATIC_TYPES.values())),
           errors=(404,), prefixed=False, params=(Param("path", "path", _STR, required=True),))
    async def frontend_file(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        try:
            path = resolve_inside(self.ctx.settings.frontend_dir, rel)
        except PathOutsideRoot as exc:
            raise ApiError(404, "not_found", "File not found", rel) from exc
        if not path.is_file():
            raise ApiError(404, "not_found", "File not found", rel)
        ctype = STATIC_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        return web.FileResponse(path, headers={**_NO_CACHE, "Content-Type": ctype or "application/octet-stream"})

    @route("GET", "/loom/default-workflow", "The editor workflow opened on first visit (Settings.default_workflow, "
           "workflows/txt2img.json unless configured).", "frontend", response=_OBJECT, errors=(404,), prefixed=False)
    async def default_workflow(self, request: web.Request) -> web.StreamResponse:
        path = self.ctx.settings.default_workflow
        if not path.is_file():
            raise ApiError(404, "not_found", "Default workflow not found", f"{path} does not exist")
        return web.FileResponse(path, headers={**_NO_CACHE, "Content-Type": "application/json"})

    @route("POST", "/loom/workflow/api", "An editor workflow (the body) converted to the API format, as POST "
           "/prompt would queue it.", "frontend", response=_OBJECT, errors=(400,), prefixed=False)
    async def workflow_to_api(self, request: web.Request) -> web.Response:
        return await self._convert(request, ui_to_api)

    @route("POST", "/loom/workflow/editor", "An API-format prompt (the body) laid out as an editor workflow, for "
           "opening API files in the editor.", "frontend", response=_OBJECT, errors=(400,), prefixed=False)
    async def workflow_to_editor(self, request: web.Request) -> web.Response:
        return await self._convert(request, api_to_ui)

    async def _convert(self, request: web.Request, convert: Callable[[Any, NodeRegistry], dict[str, Any]]
                       ) -> web.Response:
        """The JSON body converted between the editor and API formats; a 400 naming what was wrong."""
        body = await read_json(request, required=True)
        try:
            converted = await blocking(convert, body, self.ctx.registry)
        except ValidationFailed as exc:
            return json_ok(exc.to_response(), status=400)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ApiError(400, "invalid_workflow", "Invalid workflow",
                           f"the workflow could not be read: {type(exc).__name__}: {exc}") from exc
        return json_ok(converted)
