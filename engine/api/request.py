"""Reading requests and writing JSON replies: bad input is always a 400 in the error schema, never a 500."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from engine.api.errors import ApiError
from engine.folders import FILE_KINDS, path_problem
from engine.jsonutil import StrictJsonError, dumps_compact, loads_strict

M = TypeVar("M", bound=BaseModel)


def json_ok(data: Any, status: int = 200) -> web.Response:
    """A compact JSON response."""
    return web.Response(text=dumps_compact(data), status=status, content_type="application/json")


def _unreadable(exc: Exception) -> ApiError:
    """A body that cannot be read, e.g. Content-Encoding: gzip on a body that is not gzip."""
    return ApiError(400, "invalid_body", "Request body could not be read",
                    f"{ascii(str(exc))[1:-1][:300]}; send the body as its Content-Encoding says, or without one")


async def read_json(request: web.Request, *, required: bool) -> Any:
    """The JSON body, parsed strictly (no NaN/Infinity, no lone surrogates); ``{}`` when empty unless required."""
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:
        raise _unreadable(exc) from exc
    return parse_json(raw, required=required)


async def read_body(request: web.Request, limit: int, limit_name: str) -> bytes:
    """The raw body, at most ``limit`` bytes: 413 beyond it (before reading, when Content-Length says so)."""
    too_large = f"the limit is {limit} bytes ({limit_name})"
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", "Request body too large",
                       f"the body is {request.content_length} bytes; {too_large}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", "Request body too large",
                               f"the body is more than {limit} bytes; {too_large}")
            chunks.append(chunk)
    except web.RequestPayloadError as exc:
        raise _unreadable(exc) from exc
    return b"".join(chunks)


def parse_json(raw: bytes, *, required: bool) -> Any:
    """A request body parsed as JSON, strictly; ``{}`` when empty unless required (then a 400)."""
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_json", "Request body is empty", "send a JSON object as the request body")
        return {}
    try:
        return loads_strict(raw)
    except StrictJsonError as exc:
        raise ApiError(400, "invalid_json", "Request body is not valid JSON", str(exc)[:500],
                       {"path": exc.path[:200]} if exc.path else None) from exc
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "Request body is not valid JSON", ascii(str(exc))[1:-1][:500]) from exc


def parse_model(model: type[M], body: Any) -> M:
    """``body`` validated as ``model``; a 400 naming each bad field otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "Request body must be a JSON object",
                       f"got a JSON {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()[:10])
        raise ApiError(400, "invalid_request", "Request body has invalid fields", problems) from exc


def int_query(request: web.Request, name: str) -> int | None:
    """An optional integer query parameter."""
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"Invalid {name}", f"{name} must be an integer") from exc


def check_relative(value: str, what: str) -> None:
    """Refuse a request path piece that tries to leave its folder: 400 with the reason."""
    problem = path_problem(value, from_request=True)
    if problem is not None:
        raise ApiError(400, "invalid_path", f"Invalid {what}", f"{what} {value!r} {problem}")


def file_kind(value: str | None, default: str) -> str:
    """``input``, ``output`` or ``temp`` (the request's ``type``), or a 400."""
    kind = value or default
    if kind not in FILE_KINDS:
        raise ApiError(400, "invalid_type", "Invalid file type", f"type {kind!r} is not one of {', '.join(FILE_KINDS)}")
    return kind
