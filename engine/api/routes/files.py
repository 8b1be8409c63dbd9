"""``/view`` (download, with optional re-encoding) and ``/upload/image``, ``/upload/mask``.

Every name resolves through :class:`engine.folders.Folders` (400 for names that try to leave their
folder, 403 for symlinks that lead out) and every write goes through the instance's
:class:`engine.files.FileStore` (free name, same bytes reused, atomic). Uploads are bounded in bytes
while they are read and in pixels before they are decoded.
"""

from __future__ import annotations

import errno
import mimetypes
from pathlib import Path
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image
from pydantic import ValidationError

from engine import images
from engine.api import protocol as p
from engine.api.context import ApiContext, blocking
from engine.api.errors import ApiError
from engine.api.operation import Param, max_body_bytes, route
from engine.api.request import check_relative, file_kind, json_ok
from engine.errors import PathOutsideRoot
from engine.files import NoFreeName
from engine.folders import path_problem, split_annotation
from engine.jsonutil import loads_strict

#: Content types /view may label a file with; anything else is served as application/octet-stream
#: so that a stored .html/.js/.svg can never run in the server's origin.
SAFE_VIEW_TYPES = frozenset({
    "image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/avif", "image/tiff",
    "video/mp4", "video/webm", "audio/mpeg", "audio/wav", "audio/x-wav", "audio/flac", "audio/ogg",
    "application/json", "text/plain",
})
_FIELD_LIMIT = 64 * 1024
_STR = {"type": "string"}
_VIEW_TYPES = ("image/png", "image/webp", "image/jpeg", "application/octet-stream")


class FileRoutes:
    """Files of the input, output and temp folders."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def _resolve(self, kind: str, filename: str, subfolder: str) -> Path:
        check_relative(subfolder, "subfolder")
        check_relative(filename, "filename")
        try:
            return self.ctx.folders.file_path(kind, filename, subfolder)
        except PathOutsideRoot as exc:
            raise ApiError(403, "forbidden_path", "Path outside its folder", str(exc)) from exc

    @route("GET", "/view", "Download a file from the input, output or temp folder.", "files",
           response={"type": "string", "format": "binary"}, response_types=_VIEW_TYPES, errors=(400, 403, 404),
           params=(Param("filename", "query", _STR, "File name; may end in ' [input]' etc.", True),
                   Param("type", "query", {"enum": ["input", "output", "temp"], "default": "output"}),
                   Param("subfolder", "query", _STR),
                   Param("preview", "query", _STR, "Re-encode: 'webp;90' or 'jpeg;90'."),
                   Param("channel", "query", {"enum": ["rgba", "rgb", "a"]}, "Image channels.")))
    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        kind, filename = split_annotation(query.get("filename", ""), query.get("type") or "output")
        if not filename:
            raise ApiError(400, "invalid_filename", "Missing filename", "pass ?filename=NAME")
        kind = file_kind(kind, "output")
        subfolder = query.get("subfolder", "")
        path = self._resolve(kind, filename, subfolder)
        if not path.is_file():
            raise ApiError(404, "not_found", "File not found",
                           f"{kind}/{subfolder}/{filename} does not exist".replace("//", "/"))
        preview, channel = query.get("preview"), query.get("channel")
        if preview or channel in ("rgb", "a"):
            data, ctype = await blocking(self._reencode, path, preview, channel or "rgba")
            return web.Response(body=data, content_type=ctype,
                                headers={"Content-Disposition": disposition(path.name, inline=True)})
        guessed = mimetypes.guess_type(path.name)[0]
        safe = guessed in SAFE_VIEW_TYPES
        return web.FileResponse(path, headers={
            "Content-Type": guessed if safe and guessed else "application/octet-stream",
            "Content-Disposition": disposition(path.name, inline=safe),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        })

    def _reencode(self, path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
        """/view's ``preview=fmt;quality`` and ``channel=rgb|a`` conversions."""
        fmt, quality = _preview_format(preview)
        image = images.select_channel(self._decode(path.read_bytes(), "file"), channel)
        return images.encode(image, fmt, quality), images.PREVIEW_FORMATS.get(fmt, "image/png")

    def _decode(self, data: bytes, what: str) -> Image.Image:
        try:
            return images.decode_image(data, self.ctx.settings.max_image_pixels, what)
        except images.ImageTooLarge as exc:
            raise ApiError(413, "image_too_large", "Image has too many pixels", str(exc)) from exc
        except images.ImageError as exc:
            raise ApiError(400, "invalid_image", "Not a readable image", str(exc)) from exc

    @route("POST", "/upload/image", "Upload an image into input/output/temp.", "files", request=p.UploadForm,
           request_type="multipart/form-data", request_required=True, response=p.UploadResponse,
           errors=(400, 403, 409, 413), limits=("max_upload_bytes", "max_image_pixels"))
    async def upload_image(self, request: web.Request) -> web.Response:
        data, filename, fields = await self._read_upload(request)
        return json_ok(await blocking(self._save_image, data, filename, fields))

    @route("POST", "/upload/mask", "Upload a mask: its alpha is written into the original image (original_ref).",
           "files", request=p.UploadForm, request_type="multipart/form-data", request_required=True,
           response=p.UploadResponse, errors=(400, 403, 404, 409, 413), limits=("max_upload_bytes", "max_image_pixels"))
    async def upload_mask(self, request: web.Request) -> web.Response:
        data, filename, fields = await self._read_upload(request)
        return json_ok(await blocking(self._save_mask, data, filename, fields))

    async def _read_upload(self, request: web.Request) -> tuple[bytes, str, dict[str, str]]:
        """(image bytes, its file name, the other form fields), each bounded in size."""
        limit = self.ctx.settings.max_upload_bytes
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "invalid_request", "Expected multipart/form-data",
                           "send the image as a multipart form field named 'image'")
        if request.content_length is not None and request.content_length > max_body_bytes(limit):
            raise ApiError(413, "payload_too_large", "Upload too large",
                           f"the request is {request.content_length} bytes; the limit is {limit}")
        try:
            image, filename, fields = await _read_form(request, limit)
        except (ValueError, HttpProcessingError, web.RequestPayloadError) as exc:  # payload: a bad Content-Encoding
            raise ApiError(400, "invalid_multipart", "Malformed multipart body",
                           f"the multipart/form-data body could not be read ({_reason(exc)}); send one part per "
                           "field between boundary lines, ending with the closing boundary") from exc
        if image is None or not filename:
            raise ApiError(400, "no_image", "No image uploaded",
                           "send the file as the multipart field 'image', with a file name")
        return image, filename, fields

    def _store(self, data: bytes, filename: str, fields: dict[str, str]) -> dict[str, str]:
        kind = file_kind(fields.get("type"), "input")
        subfolder = fields.get("subfolder", "")
        name = plain_file_name(filename)
        self._resolve(kind, name, subfolder)
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        try:
            saved = self.ctx.store.save(kind, name, data, subfolder=subfolder, overwrite=overwrite)
        except NoFreeName as exc:
            raise ApiError(409, "name_exhausted", "No free file name", str(exc)) from exc
        except OSError as exc:
            if exc.errno not in _BAD_NAME_ERRNOS:
                raise
            raise ApiError(400, "invalid_path", "The file cannot be written there",
                           f"{kind}/{subfolder}/{name}"[:300] + f": {exc.strerror}; a part of the subfolder is "
                           "a file, or a name is too long for the file system: pick another subfolder or name"
                           ) from exc
        return {"name": saved, "subfolder": subfolder, "type": kind}

    def _save_image(self, data: bytes, filename: str, fields: dict[str, str]) -> dict[str, str]:
        self._decode(data, "image")
        return self._store(data, filename, fields)

    def _save_mask(self, data: bytes, filename: str, fields: dict[str, str]) -> dict[str, str]:
        ref = _original_ref(fields.get("original_ref"))
        kind, name = split_annotation(ref.filename, ref.type)
        original_path = self._resolve(file_kind(kind, "output"), name, ref.subfolder)
        if not original_path.is_file():
            raise ApiError(404, "not_found", "Original image not found", f"{kind}/{name}")
        mask = self._decode(data, "mask")
        original = self._decode(original_path.read_bytes(), "original image")
        return self._store(images.with_mask_alpha(original, mask), filename, fields)


#: Errors of a write that come from the requested name, not from the server: a subfolder part that is a
#: file (EEXIST, ENOTDIR), a directory where the file goes (EISDIR), a name too long (ENAMETOOLONG).
_BAD_NAME_ERRNOS = frozenset({errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})


def _original_ref(raw: str | None) -> p.FileRef:
    """/upload/mask's ``original_ref`` field, or a 400 saying what to send."""
    bad = ApiError(400, "invalid_request", "Missing or invalid original_ref",
                   'send original_ref as JSON {"filename", "subfolder", "type"}')
    try:
        ref = loads_strict(raw) if raw else None
        if isinstance(ref, dict):
            return p.FileRef.model_validate(ref)
    except (ValueError, ValidationError, RecursionError) as exc:  # RecursionError: deep nesting
        raise bad from exc
    raise bad


def _preview_format(preview: str | None) -> tuple[str, int]:
    """(format, quality) of ``preview=webp;90`` (PNG when there is no preview)."""
    if not preview:
        return "png", 100
    fmt, _, quality_text = preview.partition(";")
    fmt = fmt.lower()
    if fmt not in images.PREVIEW_FORMATS:
        raise ApiError(400, "invalid_preview", "Invalid preview format", "use preview=webp;90 or jpeg;90")
    try:
        return fmt, max(1, min(100, int(quality_text or 90)))
    except ValueError as exc:
        raise ApiError(400, "invalid_preview", "Invalid preview quality", quality_text) from exc


def plain_file_name(name: str) -> str:
    """An uploaded file's name reduced to its last path component, or a 400."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not base or base in (".", "..") or len(base.encode()) > 255:
        raise ApiError(400, "invalid_filename", "Invalid file name",
                       f"the uploaded file's name {name!r} cannot be used; send a plain file name")
    if path_problem(base, from_request=True) or any(ord(c) < 32 for c in base):
        raise ApiError(400, "invalid_filename", "Invalid file name",
                       f"the uploaded file's name {name!r} contains escape or control characters")
    return base


async def _read_form(request: web.Request, limit: int) -> tuple[bytes | None, str, dict[str, str]]:
    """(the ``image`` part's bytes or None, its file name, the other fields) of a multipart body.

    A malformed body (no or wrong boundary, no closing delimiter, a bad part header) raises
    ValueError or aiohttp's HttpProcessingError; the caller answers 400.
    """
    image: bytes | None = None
    filename = ""
    fields: dict[str, str] = {}
    async for part in await request.multipart():
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "invalid_request", "Nested multipart is not supported")
        if part.name == "image":
            if image is not None:
                raise ApiError(400, "invalid_request", "More than one image field")
            filename = part.filename or ""
            image = await _read_part(part, limit, "the image")
        elif part.name:
            fields[part.name] = (await _read_part(part, _FIELD_LIMIT, part.name)).decode("utf-8", "replace")
    return image, filename, fields


def _reason(exc: Exception) -> str:
    """A one-line reason from a multipart parsing error (aiohttp's messages span lines)."""
    if isinstance(exc, HttpProcessingError):
        return " ".join(exc.message.split())[:200] or type(exc).__name__
    return " ".join(str(exc).split())[:200] or type(exc).__name__


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


def disposition(name: str, *, inline: bool) -> str:
    """A Content-Disposition header naming the file (ASCII fallback plus the UTF-8 name)."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
