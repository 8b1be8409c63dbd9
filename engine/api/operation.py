"""How a route is declared: one decorator on its handler carries everything the OpenAPI document says.

A handler method of a route class (``engine/api/routes/``) is marked with :func:`route`. The server
registers every marked method at its path (``/x`` and ``/api/x``), and :mod:`engine.api.openapi`
documents the same declarations, so a route cannot exist without being documented and no handler
map is kept by hand.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

API_PREFIXES: tuple[str, ...] = ("", "/api")
#: Room for multipart headers and form fields beside an upload of ``max_upload_bytes``.
FORM_OVERHEAD = 64 * 1024
_MARK = "__loom_operation__"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Callable[..., Awaitable[web.StreamResponse]])


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" or "path"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One route: method, path (without the /api prefix) and what it takes and gives.

    ``request`` and ``response`` are pydantic models, JSON schemas, or None for no/an empty body.
    ``response_types`` are the content types the body may have (a schema applies to JSON ones only).
    ``limits`` name the :class:`engine.settings.Settings` fields that bound this route besides the
    request body (which :func:`max_body_bytes` bounds for every route, or the field ``body_limit``
    names); the OpenAPI document states their values. ``error_bodies`` document error statuses whose
    body is not the one error schema (ComfyUI's own shape, where its frontend reads it).
    """

    method: str
    path: str
    name: str
    summary: str
    tag: str
    request: type[BaseModel] | dict[str, Any] | None = None
    request_type: str = "application/json"
    request_required: bool = False
    response: type[BaseModel] | dict[str, Any] | None = None
    response_types: tuple[str, ...] = ("application/json",)
    response_description: str = "OK"
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    status: int = 200
    prefixed: bool = True  # also served under /api
    limits: tuple[str, ...] = ()
    body_limit: str | None = None
    error_bodies: dict[int, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def max_body_bytes(max_upload_bytes: int) -> int:
    """The largest request body of any route (aiohttp's ``client_max_size``; beyond it, 413)."""
    return max_upload_bytes + FORM_OVERHEAD


def route(method: str, path: str, summary: str, tag: str, **details: Any) -> Callable[[F], F]:
    """Declare the decorated handler as ``METHOD path``; ``details`` are :class:`Operation` fields."""

    def mark(handler: F) -> F:
        setattr(handler, _MARK, Operation(method, path, handler.__name__, summary, tag, **details))
        return handler

    return mark


def declared(cls: type) -> list[Operation]:
    """The operations a route class declares, in the order its methods are written."""
    return [op for member in vars(cls).values() if (op := getattr(member, _MARK, None)) is not None]


def bound(routes: object) -> list[tuple[Operation, Handler]]:
    """Each operation of a route object with its bound handler."""
    return [(op, getattr(routes, op.name)) for op in declared(type(routes))]


def served_paths(op: Operation) -> list[str]:
    """The URL paths an operation is served at (``/x`` and ``/api/x`` unless it is unprefixed)."""
    return [prefix + op.path for prefix in API_PREFIXES] if op.prefixed else [op.path]
