"""ComfyUI's official frontend served by Loom (``--frontend comfyui``): its static files at ``/``.

The files come from ``Settings.comfyui_frontend_dir`` (a custom build) or from the installed
``comfyui-frontend-package`` (its ``static`` folder; ``pip install -e '.[comfyui-frontend]'``). Its
``index.html`` loads ``./assets/...``, ``user.css`` and fonts relative to ``/``, so every GET that no route of
Loom's answers is looked up in that folder (the catch-all is registered after every other route):

* a file there is sent with its MIME type; the content-hashed ``assets/`` files are cached for a year
  (``immutable``), everything else is revalidated (``no-cache``), ``index.html`` included;
* anything else is a plain-text 404 (a JSON body would be refused as CSS or script by the browser), except
  paths under ``/api/`` and ``/internal/``, which keep the API's JSON 404;
* paths that leave the folder are refused like missing files;
* HTML pages carry a Content-Security-Policy that lets the page connect to Loom only (:data:`CONNECT_POLICY`):
  nothing leaves the machine by default, even the requests the frontend makes without asking its settings.

These files are public, as Loom's own editor files are: the access token guards the API, not the page that asks
for it (engine/api/security.py).
"""

from __future__ import annotations

import importlib.util
import mimetypes
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from engine.errors import LoomError, PathOutsideRoot
from engine.folders import resolve_inside
from engine.settings import Settings

__all__ = ["API_PREFIXES", "CONNECT_POLICY", "FrontendMissing", "comfyui_static_root", "file_response", "static_file",
           "static_handler"]

#: Paths whose misses stay JSON errors of the API.
API_PREFIXES = ("api/", "internal/")
PACKAGE = "comfyui_frontend_package"
_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".map": "application/json", ".svg": "image/svg+xml", ".wasm": "application/wasm", ".png": "image/png",
    ".ico": "image/x-icon", ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf",
    ".webp": "image/webp", ".jpg": "image/jpeg", ".webmanifest": "application/manifest+json",
}
#: The page may fetch and open websockets to Loom only: ComfyUI's frontend has no setting for some requests to
#: other hosts (a HEAD to the model host for each missing model's size, on every graph load), so the browser
#: refuses them. Pictures, fonts and styles are not restricted.
CONNECT_POLICY = "connect-src 'self'"
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"


class FrontendMissing(LoomError):
    """``--frontend comfyui`` without a frontend to serve."""


def comfyui_static_root(settings: Settings) -> Path:
    """The folder ComfyUI's frontend is served from; FrontendMissing says how to install it."""
    if settings.comfyui_frontend_dir is not None:
        root = Path(settings.comfyui_frontend_dir)
        if not (root / "index.html").is_file():
            raise FrontendMissing(f"--frontend comfyui: {root} holds no index.html; point --frontend-dir at the "
                                  "static folder of a ComfyUI frontend build")
        return root
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FrontendMissing("--frontend comfyui needs ComfyUI's frontend: pip install -e '.[comfyui-frontend]' "
                              "(or give --frontend-dir the static folder of a ComfyUI frontend build)")
    root = Path(spec.origin).parent / "static"
    if not (root / "index.html").is_file():
        raise FrontendMissing(f"the installed {PACKAGE} has no static/index.html at {root}; reinstall it")
    return root


def static_file(root: Path, rel: str) -> Path | None:
    """The file ``rel`` names inside ``root``, or None (missing, a folder, or outside the root)."""
    try:
        path = resolve_inside(root, rel)
    except PathOutsideRoot:
        return None
    return path if path.is_file() else None


def file_response(path: Path, rel: str) -> web.FileResponse:
    ctype = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    cache = _IMMUTABLE if rel.startswith("assets/") else _REVALIDATE
    headers = {"Content-Type": ctype, "Cache-Control": cache}
    if path.suffix.lower() == ".html":
        headers["Content-Security-Policy"] = CONNECT_POLICY
    return web.FileResponse(path, headers=headers)


def static_handler(root: Path) -> Handler:
    """The catch-all GET handler serving ``root`` (see the module docstring)."""
    async def serve(request: web.Request) -> web.StreamResponse:
        rel = request.match_info.get("tail", "") or "index.html"
        if rel.startswith(API_PREFIXES):
            raise web.HTTPNotFound()  # the error middleware answers with the API's JSON 404
        path = static_file(root, rel)
        if path is None:
            return web.Response(status=404, text="404: Not Found", content_type="text/plain")
        return file_response(path, rel)
    return serve
