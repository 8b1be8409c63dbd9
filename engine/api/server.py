"""The aiohttp application: ComfyUI-compatible routes at ``/x`` and ``/api/x``, the websocket, the
static editor, and the security middlewares.

The route list lives in :mod:`engine.api.openapi` (``OPERATIONS``); :func:`create_app` registers a
handler of :class:`LoomServer` for each one, so every route is documented in ``/openapi.json``.
Handlers never let an exception escape as a bare 500: bad input is a 4xx in the one error schema
of :mod:`engine.api.protocol`, anything unexpected a logged 500 in the same schema, and the server
keeps serving. Blocking work (image decoding, torch import, file writes) runs in the default
thread pool; queue calls are short sqlite transactions and run inline.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import math
import mimetypes
import os
import re
import sys
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel, ValidationError

from engine.api import protocol as p
from engine.api.hub import Hub
from engine.api.openapi import OPERATIONS, build_document, served_paths
from engine.api.security import ApiError, middlewares, security_headers
from engine.errors import PathOutsideRoot, QueueFull, ValidationFailed
from engine.folders import FILE_KINDS, MODEL_FOLDERS, resolve_inside
from engine.settings import Settings
from engine.validate import ValidatedPrompt, validate_prompt
from engine.workflow import is_ui_workflow, ui_to_api
from engine.workflow_layout import api_to_ui

if TYPE_CHECKING:
    from engine.cache import OutputCache
    from engine.queue import PromptQueue
    from engine.registry import NodeRegistry
    from engine.worker import PromptRunner

log = logging.getLogger(__name__)

LOOM_VERSION = "0.1.0"
#: The ComfyUI release whose API Loom mirrors (reported as ``comfyui_version``).
COMFYUI_API_VERSION = "0.3.64"

#: Model folders ComfyUI clients ask for beyond the ones Loom loads from, with their file endings.
EXTRA_MODEL_FOLDERS: dict[str, tuple[str, ...]] = {"configs": (".yaml", ".yml", ".json")}

#: Content types /view may label a file with; anything else is served as application/octet-stream
#: so that a stored .html/.js/.svg can never run in the server's origin.
SAFE_VIEW_TYPES = frozenset({
    "image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/avif", "image/tiff",
    "video/mp4", "video/webm", "audio/mpeg", "audio/wav", "audio/x-wav", "audio/flac", "audio/ogg",
    "application/json", "text/plain",
})
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".svg": "image/svg+xml",
    ".wasm": "application/wasm", ".png": "image/png", ".ico": "image/x-icon",
    ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf",
}
_ENCODED_ESCAPE = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_ANNOTATED = re.compile(r"^(.*) \[(input|output|temp)\]$")
_FIELD_LIMIT = 64 * 1024
_FORM_OVERHEAD = 64 * 1024
_NO_CACHE = {"Cache-Control": "no-cache"}

NOT_INSTALLED_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Loom</title></head>
<body><h1>Loom is running</h1>
<p>The graph editor is not installed in the frontend folder. The HTTP API is available; see
<a href="/openapi.json">/openapi.json</a>.</p></body></html>
"""

SERVER_KEY = web.AppKey("loom_server", "LoomServer")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


def json_ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=_dumps(data), status=status, content_type="application/json")


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


# --------------------------------------------------------------------------- request parsing


async def read_json(request: web.Request, *, required: bool) -> Any:
    """The JSON body; an empty body is ``{}`` unless required. Bad JSON is a 400, never a 500."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_json", "Request body is empty",
                           "send a JSON object as the request body")
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "Request body is not valid JSON", str(exc)[:500]) from exc


def parse_model(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "Request body must be a JSON object",
                       f"got a JSON {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()[:10])
        raise ApiError(400, "invalid_request", "Request body has invalid fields", problems) from exc


def check_relative(value: str, what: str) -> None:
    """Refuse a request path piece that tries to leave its folder: 400 with the reason."""
    reason = None
    if "\x00" in value:
        reason = "contains a NUL byte"
    elif "\\" in value:
        reason = "contains a backslash"
    elif value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        reason = "is an absolute path"
    elif any(seg == ".." for seg in value.split("/")):
        reason = "contains '..'"
    elif _ENCODED_ESCAPE.search(value):
        reason = "contains a percent-encoded path character"
    if reason is not None:
        raise ApiError(400, "invalid_path", f"Invalid {what}", f"{what} {value!r} {reason}")


def sanitize_filename(name: str) -> str:
    """An uploaded file's name reduced to its last path component, or a 400."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not base or base in (".", "..") or "\x00" in base or len(base.encode()) > 255:
        raise ApiError(400, "invalid_filename", "Invalid file name",
                       f"the uploaded file's name {name!r} cannot be used; send a plain file name")
    if _ENCODED_ESCAPE.search(base) or any(ord(c) < 32 for c in base):
        raise ApiError(400, "invalid_filename", "Invalid file name",
                       f"the uploaded file's name {name!r} contains escape or control characters")
    return base


def _file_kind(value: str | None, default: str) -> str:
    kind = value or default
    if kind not in FILE_KINDS:
        raise ApiError(400, "invalid_type", "Invalid file type",
                       f"type {kind!r} is not one of {', '.join(FILE_KINDS)}")
    return kind


# --------------------------------------------------------------------------- images


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """Fully decode an image, refusing non-images (400) and oversized ones (413)."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise ApiError(413, "image_too_large", "Image has too many pixels",
                           f"the {what} is {width}x{height} = {width * height} pixels; the limit is "
                           f"{max_pixels}")
        img.load()
        return img
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image_too_large", "Image has too many pixels", str(exc)) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ApiError(400, "invalid_image", "Not a readable image",
                       f"the {what} could not be decoded as an image: {exc}") from exc


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _free_name(path: Path, data: bytes, overwrite: bool) -> Path:
    """``path``, or ``stem (i).ext`` when taken by different bytes (identical bytes reuse the name)."""
    if overwrite or not path.exists() or _same_bytes(path, data):
        return path
    stem, ext = os.path.splitext(path.name)
    for i in range(1, 100_000):
        candidate = path.with_name(f"{stem} ({i}){ext}")
        if not candidate.exists() or _same_bytes(candidate, data):
            return candidate
    raise ApiError(409, "name_exhausted", "No free file name", f"too many files named like {path.name}")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _apply_mask(original: Image.Image, mask: Image.Image) -> bytes:
    """The original as PNG with the mask's alpha as its alpha; the original's text chunks kept."""
    info = PngImagePlugin.PngInfo()
    for key, value in (getattr(original, "text", None) or {}).items():
        if isinstance(value, str):
            info.add_text(key, value)
    rgba = original.convert("RGBA")
    alpha = mask.convert("RGBA").getchannel("A")
    if alpha.size != rgba.size:
        alpha = alpha.resize(rgba.size, Image.Resampling.BILINEAR)
    rgba.putalpha(alpha)
    out = io.BytesIO()
    rgba.save(out, format="PNG", pnginfo=info, compress_level=4)
    return out.getvalue()


def _reencode(path: Path, preview: str | None, channel: str | None, max_pixels: int) -> tuple[bytes, str]:
    """/view's ``preview=fmt;quality`` and ``channel=rgb|a`` conversions."""
    img = decode_image(path.read_bytes(), max_pixels, "file")
    if channel == "rgb":
        img = img.convert("RGB")
    elif channel == "a":
        alpha = img.convert("RGBA").getchannel("A")
        img = Image.new("RGBA", img.size)
        img.putalpha(alpha)
    out = io.BytesIO()
    if preview:
        fmt, _, quality_text = preview.partition(";")
        fmt = fmt.lower()
        if fmt not in ("webp", "jpeg"):
            raise ApiError(400, "invalid_preview", "Invalid preview format", "use preview=webp;90 or jpeg;90")
        try:
            quality = max(1, min(100, int(quality_text or 90)))
        except ValueError as exc:
            raise ApiError(400, "invalid_preview", "Invalid preview quality", quality_text) from exc
        if fmt == "jpeg":
            img = img.convert("RGB")
        img.save(out, format=fmt.upper(), quality=quality)
        return out.getvalue(), f"image/{fmt}"
    img.save(out, format="PNG")
    return out.getvalue(), "image/png"


# --------------------------------------------------------------------------- system information


def _memory() -> tuple[int, int]:
    try:
        info = Path("/proc/meminfo").read_text().splitlines()
        values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in info if line.count(" ")}
        return values["MemTotal"], values.get("MemAvailable", values.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError, AttributeError):
            return 0, 0


def scrub_argv(argv: list[str], secret: str | None) -> list[str]:
    """The command line without the auth token (it must never appear in /system_stats)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in ("--auth-token", "--token"):
            out.append(arg)
            hide_next = True
        elif arg.startswith(("--auth-token=", "--token=")):
            out.append(arg.split("=", 1)[0] + "=***")
        elif secret and secret in arg:
            out.append(arg.replace(secret, "***"))
        else:
            out.append(arg)
    return out


def system_stats(settings: Settings, cache: OutputCache | None, models: Any = None) -> dict[str, Any]:
    """ComfyUI's /system_stats, plus Loom's own figures (cache, loaded models) under ``loom``."""
    import torch  # lazy: the API must not pay for torch until a client asks

    ram_total, ram_free = _memory()
    devices: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            reserved = torch.cuda.memory_reserved(index)
            allocated = torch.cuda.memory_allocated(index)
            devices.append({
                "name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                "index": index, "vram_total": total, "vram_free": free,
                "torch_vram_total": reserved, "torch_vram_free": reserved - allocated,
            })
    else:
        devices.append({"name": "cpu", "type": "cpu", "index": 0, "vram_total": ram_total,
                        "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free})
    stats: dict[str, Any] = {
        "system": {
            "os": os.name, "ram_total": ram_total, "ram_free": ram_free,
            "comfyui_version": COMFYUI_API_VERSION, "loom_version": LOOM_VERSION,
            "required_frontend_version": "", "installed_templates_version": "",
            "required_templates_version": "",
            "python_version": sys.version, "pytorch_version": torch.__version__,
            "embedded_python": False, "argv": scrub_argv(list(sys.argv), settings.auth_token),
        },
        "devices": devices,
    }
    loom: dict[str, Any] = {}
    if cache is not None:
        loom.update(cache_entries=len(cache), cache_bytes=cache.nbytes)
    if models is not None and hasattr(models, "stats"):
        loom["models"] = models.stats()
    if loom:
        stats["loom"] = loom
    return stats


# --------------------------------------------------------------------------- the server


@dataclass
class LoomServer:
    """The route handlers, bound to one Loom instance's engine objects."""

    settings: Settings
    registry: NodeRegistry
    queue: PromptQueue
    worker: PromptRunner
    hub: Hub
    cache: OutputCache | None = None
    port: int | None = None
    _openapi: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.folders = self.settings.folders()
        self._store_lock = threading.Lock()  # name-clash checks and writes of concurrent uploads

    def handlers(self) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
        """Handler of every operation name in OPERATIONS."""
        return {
            "get_prompt": self.get_prompt, "post_prompt": self.post_prompt,
            "get_queue": self.get_queue, "post_queue": self.post_queue,
            "get_history": self.get_history, "post_history": self.post_history,
            "get_history_entry": self.get_history_entry, "post_interrupt": self.post_interrupt,
            "post_free": self.post_free, "view": self.view, "upload_image": self.upload_image,
            "upload_mask": self.upload_mask, "object_info": self.object_info,
            "object_info_node": self.object_info_node, "system_stats": self.system_stats,
            "embeddings": self.embeddings, "model_folders": self.model_folders,
            "models_in_folder": self.models_in_folder, "features": self.features,
            "extensions": self.extensions, "websocket": self.hub.handle, "openapi": self.openapi,
            "index": self.index, "frontend_file": self.frontend_file,
            "default_workflow": self.default_workflow, "workflow_to_api": self.workflow_to_api,
            "workflow_to_editor": self.workflow_to_editor,
        }

    async def default_workflow(self, request: web.Request) -> web.StreamResponse:
        """The editor's workflow on first open: workflows/txt2img.json of the repository."""
        path = Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json"
        if not path.is_file():
            raise ApiError(404, "not_found", "File not found", "workflows/txt2img.json")
        return web.FileResponse(path, headers={**_NO_CACHE, "Content-Type": "application/json"})

    async def workflow_to_api(self, request: web.Request) -> web.Response:
        """An editor workflow converted to the API format, as POST /prompt would queue it (Export API)."""
        workflow = await read_json(request, required=True)
        try:
            api_prompt = await self._blocking(ui_to_api, workflow, self.registry)
        except ValidationFailed as exc:
            return json_ok(exc.to_response(), status=400)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ApiError(400, "invalid_workflow", "Invalid workflow",
                           f"the workflow could not be read: {type(exc).__name__}: {exc}") from exc
        return json_ok(api_prompt)

    async def workflow_to_editor(self, request: web.Request) -> web.Response:
        """An API-format prompt (the body) laid out as an editor workflow (opening API files in the editor)."""
        prompt = await read_json(request, required=True)
        try:
            workflow = await self._blocking(api_to_ui, prompt, self.registry)
        except ValidationFailed as exc:
            return json_ok(exc.to_response(), status=400)
        return json_ok(workflow)

    @staticmethod
    async def _blocking(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    # ------------------------------------------------------------------ queue and prompts

    async def get_prompt(self, request: web.Request) -> web.Response:
        return json_ok({"exec_info": {"queue_remaining": self.queue.remaining()}})

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = parse_model(p.PromptRequest, await read_json(request, required=True))
        graph = body.prompt if body.prompt is not None else body.workflow
        if graph is None:
            raise ApiError(400, "no_prompt", "No prompt provided", "No prompt provided")
        extra_data = dict(body.extra_data or {})
        try:
            api_prompt, ui_workflow, validated = await self._blocking(
                self._prepare_prompt, graph, body.workflow, body.partial_execution_targets)
        except ValidationFailed as exc:
            return json_ok(exc.to_response(), status=400)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ApiError(400, "invalid_prompt", "Invalid prompt",
                           f"the prompt could not be read: {type(exc).__name__}: {exc}") from exc
        if ui_workflow is not None:
            pnginfo = extra_data.get("extra_pnginfo")
            pnginfo = dict(pnginfo) if isinstance(pnginfo, dict) else {}
            pnginfo.setdefault("workflow", ui_workflow)
            extra_data["extra_pnginfo"] = pnginfo
        if body.client_id is not None:
            extra_data["client_id"] = body.client_id
        if body.number is not None and not math.isfinite(body.number):
            raise ApiError(400, "invalid_request", "Invalid priority number", "number must be finite")
        prompt_id = body.prompt_id or str(uuid.uuid4())
        try:
            number = self.queue.put(prompt_id, api_prompt, extra_data, validated.outputs,
                                    number=body.number, front=bool(body.front))
        except QueueFull as exc:
            raise ApiError(503, "queue_full", "The queue is full", str(exc)) from exc
        except ValueError as exc:
            raise ApiError(400, "duplicate_prompt_id", "prompt_id already used", str(exc)) from exc
        return json_ok({"prompt_id": prompt_id, "number": _number(number),
                        "node_errors": validated.node_errors})

    def _prepare_prompt(
        self, graph: dict[str, Any], workflow: dict[str, Any] | None, targets: list[str] | None
    ) -> tuple[dict[str, Any], Mapping[str, Any] | None, ValidatedPrompt]:
        """(API prompt, UI workflow or None, validation result); runs in a worker thread."""
        if is_ui_workflow(graph):
            api_prompt: dict[str, Any] = ui_to_api(graph, self.registry)
            ui_workflow: Mapping[str, Any] | None = graph
        else:
            api_prompt = graph
            ui_workflow = workflow if is_ui_workflow(workflow) else None
        return api_prompt, ui_workflow, validate_prompt(api_prompt, self.registry, self.folders, targets)

    async def get_queue(self, request: web.Request) -> web.Response:
        return json_ok({
            "queue_running": [item.as_list() for item in self.queue.running()],
            "queue_pending": [item.as_list() for item in self.queue.pending()],
        })

    async def post_queue(self, request: web.Request) -> web.Response:
        op = parse_model(p.QueueOperation, await read_json(request, required=False))
        if op.clear:
            self.queue.clear()
        if op.delete:
            running = {item.prompt_id for item in self.queue.running()}
            for prompt_id in running.intersection(op.delete):
                self.worker.interrupt(prompt_id)  # deleting a running prompt stops it, as in ComfyUI
            self.queue.delete(op.delete)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        op = parse_model(p.InterruptRequest, await read_json(request, required=False))
        self.worker.interrupt(op.prompt_id)
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        op = parse_model(p.FreeRequest, await read_json(request, required=False))
        self.worker.request_free(bool(op.unload_models), bool(op.free_memory))
        return web.Response(status=200)

    # ------------------------------------------------------------------ history

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = _int_query(request, "max_items")
        offset = _int_query(request, "offset")
        # ComfyUI defaults offset to -1: with max_items alone, the newest entries.
        return json_ok(self.queue.history(max_items=max_items, offset=-1 if offset is None else offset))

    async def get_history_entry(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.queue.history_entry(prompt_id)
        return json_ok({} if entry is None else {prompt_id: entry})

    async def post_history(self, request: web.Request) -> web.Response:
        op = parse_model(p.HistoryOperation, await read_json(request, required=False))
        if op.clear:
            self.queue.clear_history()
        if op.delete:
            self.queue.delete_history(op.delete)
        return web.Response(status=200)

    # ------------------------------------------------------------------ files

    def _resolve(self, kind: str, filename: str, subfolder: str) -> Path:
        check_relative(subfolder, "subfolder")
        check_relative(filename, "filename")
        try:
            return self.folders.file_path(kind, filename, subfolder)
        except PathOutsideRoot as exc:
            raise ApiError(403, "forbidden_path", "Path outside its folder", str(exc)) from exc

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        filename = query.get("filename", "")
        kind = query.get("type") or "output"
        annotated = _ANNOTATED.match(filename)
        if annotated:
            filename, kind = annotated.group(1), annotated.group(2)
        if not filename:
            raise ApiError(400, "invalid_filename", "Missing filename", "pass ?filename=NAME")
        kind = _file_kind(kind, "output")
        path = self._resolve(kind, filename, query.get("subfolder", ""))
        if not path.is_file():
            raise ApiError(404, "not_found", "File not found", f"{kind}/{query.get('subfolder', '')}"
                           f"/{filename} does not exist".replace("//", "/"))
        preview, channel = query.get("preview"), query.get("channel")
        if preview or channel in ("rgb", "a"):
            data, ctype = await self._blocking(_reencode, path, preview, channel,
                                               self.settings.max_image_pixels)
            return web.Response(body=data, content_type=ctype,
                                headers={"Content-Disposition": _disposition(path.name, inline=True)})
        guessed = mimetypes.guess_type(path.name)[0]
        safe = guessed in SAFE_VIEW_TYPES
        ctype = guessed if safe and guessed else "application/octet-stream"
        return web.FileResponse(path, headers={
            "Content-Type": ctype,
            "Content-Disposition": _disposition(path.name, inline=safe),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        })

    async def _read_upload(self, request: web.Request) -> tuple[bytes, str, dict[str, str]]:
        limit = self.settings.max_upload_bytes
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "invalid_request", "Expected multipart/form-data",
                           "send the image as a multipart form field named 'image'")
        if request.content_length is not None and request.content_length > limit + _FORM_OVERHEAD:
            raise ApiError(413, "payload_too_large", "Upload too large",
                           f"the request is {request.content_length} bytes; the limit is {limit}")
        image: bytes | None = None
        filename = ""
        fields: dict[str, str] = {}
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "invalid_request", "Nested multipart is not supported")
            if part.name == "image":
                if image is not None:
                    raise ApiError(400, "invalid_request", "More than one image field")
                filename = part.filename or ""
                image = await _read_part(part, limit, "the image")
            elif part.name:
                fields[part.name] = (await _read_part(part, _FIELD_LIMIT, part.name)).decode("utf-8", "replace")
        if image is None or not filename:
            raise ApiError(400, "no_image", "No image uploaded",
                           "send the file as the multipart field 'image', with a file name")
        return image, filename, fields

    def _store(self, data: bytes, filename: str, fields: dict[str, str]) -> dict[str, str]:
        kind = _file_kind(fields.get("type"), "input")
        subfolder = fields.get("subfolder", "")
        name = sanitize_filename(filename)
        path = self._resolve(kind, name, subfolder)
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        with self._store_lock:
            path = _free_name(path, data, overwrite)
            if overwrite or not path.exists():  # an existing file here holds these very bytes
                _write_atomic(path, data)
        return {"name": path.name, "subfolder": subfolder, "type": kind}

    def _save_image(self, data: bytes, filename: str, fields: dict[str, str]) -> dict[str, str]:
        decode_image(data, self.settings.max_image_pixels)
        return self._store(data, filename, fields)

    async def upload_image(self, request: web.Request) -> web.Response:
        data, filename, fields = await self._read_upload(request)
        return json_ok(await self._blocking(self._save_image, data, filename, fields))

    def _save_mask(self, data: bytes, filename: str, fields: dict[str, str]) -> dict[str, str]:
        raw_ref = fields.get("original_ref")
        try:
            ref = json.loads(raw_ref) if raw_ref else None
            ref = p.FileRef.model_validate(ref) if isinstance(ref, dict) else None
        except (ValueError, ValidationError):
            ref = None
        if ref is None:
            raise ApiError(400, "invalid_request", "Missing or invalid original_ref",
                           'send original_ref as JSON {"filename", "subfolder", "type"}')
        ref_name, ref_kind = ref.filename, ref.type
        annotated = _ANNOTATED.match(ref_name)
        if annotated:
            ref_name, ref_kind = annotated.group(1), annotated.group(2)
        original_path = self._resolve(ref_kind, ref_name, ref.subfolder)
        if not original_path.is_file():
            raise ApiError(404, "not_found", "Original image not found", f"{ref_kind}/{ref_name}")
        mask = decode_image(data, self.settings.max_image_pixels, "mask")
        original = decode_image(original_path.read_bytes(), self.settings.max_image_pixels, "original image")
        return self._store(_apply_mask(original, mask), filename, fields)

    async def upload_mask(self, request: web.Request) -> web.Response:
        data, filename, fields = await self._read_upload(request)
        return json_ok(await self._blocking(self._save_mask, data, filename, fields))

    # ------------------------------------------------------------------ nodes, models, system

    async def object_info(self, request: web.Request) -> web.Response:
        return json_ok(await self._blocking(self.registry.object_info, self.folders))

    async def object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        cls = self.registry.get(name)
        if cls is None:
            return json_ok({})
        return json_ok({name: await self._blocking(self.registry.node_info, cls, self.folders)})

    async def system_stats(self, request: web.Request) -> web.Response:
        executor = getattr(self.worker, "executor", None)
        cache = self.cache if self.cache is not None else getattr(executor, "cache", None)
        models = getattr(executor, "models", None)
        stats = await self._blocking(system_stats, self.settings, cache, models)
        describe = getattr(self.worker, "describe", None)
        if describe is not None:  # a cluster front: its workers
            stats.setdefault("loom", {})["workers"] = describe()
        return json_ok(stats)

    async def embeddings(self, request: web.Request) -> web.Response:
        return json_ok(await self._blocking(self.folders.embedding_names))

    async def model_folders(self, request: web.Request) -> web.Response:
        return json_ok([*MODEL_FOLDERS, *EXTRA_MODEL_FOLDERS])

    async def models_in_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder in EXTRA_MODEL_FOLDERS:
            return json_ok(await self._blocking(self.folders.list_models, folder, EXTRA_MODEL_FOLDERS[folder]))
        if folder not in MODEL_FOLDERS:
            raise ApiError(404, "unknown_folder", "Unknown model folder",
                           f"{folder!r} is not one of {', '.join([*MODEL_FOLDERS, *EXTRA_MODEL_FOLDERS])}")
        return json_ok(await self._blocking(self.folders.list_models, folder))

    async def features(self, request: web.Request) -> web.Response:
        return json_ok(self.hub.feature_flags)

    async def extensions(self, request: web.Request) -> web.Response:
        return json_ok([])

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = _dumps(build_document(LOOM_VERSION))
        return web.Response(text=self._openapi, content_type="application/json")

    # ------------------------------------------------------------------ the editor

    async def index(self, request: web.Request) -> web.StreamResponse:
        index = self.settings.frontend_dir / "index.html"
        if index.is_file():
            return web.FileResponse(index, headers={**_NO_CACHE, "Content-Type": STATIC_TYPES[".html"]})
        return web.Response(text=NOT_INSTALLED_HTML, content_type="text/html", headers=_NO_CACHE)

    async def frontend_file(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        try:
            path = resolve_inside(self.settings.frontend_dir, rel)
        except PathOutsideRoot as exc:
            raise ApiError(404, "not_found", "File not found", rel) from exc
        if not path.is_file():
            raise ApiError(404, "not_found", "File not found", rel)
        ctype = STATIC_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        return web.FileResponse(path, headers={**_NO_CACHE,
                                               "Content-Type": ctype or "application/octet-stream"})


async def _read_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", "Upload too large",
                           f"{what} is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _int_query(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"Invalid {name}", f"{name} must be an integer") from exc


def _disposition(name: str, *, inline: bool) -> str:
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _route_pattern(path: str) -> str:
    """aiohttp pattern of a documented path: ``{path}`` and ``{node_class}`` may contain slashes."""
    return path.replace("{path}", "{path:.+}").replace("{node_class}", "{node_class:.+}")


def create_app(
    settings: Settings,
    registry: NodeRegistry,
    queue: PromptQueue,
    worker: PromptRunner,
    hub: Hub,
    *,
    cache: OutputCache | None = None,
) -> web.Application:
    """The aiohttp application serving every route of OPERATIONS at ``/x`` and ``/api/x``."""
    server = LoomServer(settings, registry, queue, worker, hub, cache)
    app = web.Application(middlewares=middlewares(settings),
                          client_max_size=settings.max_upload_bytes + _FORM_OVERHEAD)
    app[SERVER_KEY] = server
    hub.setup(settings, queue)
    app.on_startup.append(hub.start)
    app.on_shutdown.append(hub.stop)
    app.on_response_prepare.append(security_headers)
    handlers = server.handlers()
    for op in OPERATIONS:
        handler = handlers.get(op.name)
        if handler is None:
            raise RuntimeError(f"route {op.method} {op.path} ({op.name}) has no handler")
        for path in served_paths(op):
            if op.method == "GET":
                app.router.add_get(_route_pattern(path), handler)
            else:
                app.router.add_route(op.method, _route_pattern(path), handler)
    return app


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on (useful with port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the server is not listening on a TCP port")


async def start_server(app: web.Application, settings: Settings) -> web.AppRunner:
    """Bind ``settings.host:settings.port`` (0: a free port) and start serving; returns the runner.

    The bound port is logged as ``Loom listening on http://HOST:PORT`` and available from
    :func:`bound_port` and ``app[SERVER_KEY].port``.
    """
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = bound_port(runner)
    app[SERVER_KEY].port = port
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info("Loom listening on http://%s:%d", host, port)
    return runner
