"""The one error schema of the HTTP API, and the middleware that makes every failure use it.

Handlers raise :class:`ApiError` for bad requests; :func:`error_middleware` (the outermost
middleware) turns it, aiohttp's own HTTP errors (404, 405, 413...) and any unexpected exception
(logged, then a 500) into a JSON body ``{"error": {type, message, details, extra_info},
"node_errors": {}}``: ComfyUI's ``POST /prompt`` error shape, documented as ``ErrorResponse``.
The server keeps serving after any of them.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from engine.jsonutil import dumps_compact

log = logging.getLogger(__name__)

_HTTP_KINDS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large"}
_KEPT_HEADERS = (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE)


def error_body(kind: str, message: str, details: str = "",
               extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of an error response in the one documented schema."""
    return {
        "error": {"type": kind, "message": message, "details": details or message,
                  "extra_info": dict(extra_info or {})},
        "node_errors": {},
    }


def error_response(status: int, kind: str, message: str, details: str = "",
                   extra_info: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(kind, message, details, extra_info), status=status,
                             headers=headers, dumps=dumps_compact)


class ApiError(Exception):
    """Raised by handlers: becomes a JSON error response in the documented schema."""

    def __init__(self, status: int, kind: str, message: str, details: str = "",
                 extra_info: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.details = details
        self.extra_info = dict(extra_info or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.kind, self.message, self.details, self.extra_info)


def _http_error(exc: web.HTTPException) -> web.Response:
    kind = _HTTP_KINDS.get(exc.status, "http_error")
    reason = exc.reason or "error"
    details = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else reason
    headers = {key: value for key, value in exc.headers.items() if key in _KEPT_HEADERS}
    return error_response(exc.status, kind, reason, details, headers=headers)


def error_middleware() -> Middleware:
    """Every 4xx/5xx as JSON in the error schema; unexpected exceptions logged and answered with 500."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(exc)
        except Exception as exc:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return error_response(500, "internal_error", "Internal server error", f"{type(exc).__name__}: {exc}")

    return errors
