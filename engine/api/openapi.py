"""The OpenAPI 3.1 document, derived from the routes' declarations and the wire's sources.

Paths come from the :class:`engine.api.operation.Operation` each handler declares; component
schemas from the pydantic models of :mod:`engine.api.protocol` (HTTP shapes) and from the event
dataclasses of :mod:`engine.events` (websocket frames, via :mod:`engine.api.messages`). Nothing
is described twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from engine.api import protocol as p
from engine.api.messages import message_components
from engine.api.operation import Operation, max_body_bytes, served_paths
from engine.settings import Settings

_ERROR_TEXT = {400: "Bad request", 401: "Authentication required", 403: "Forbidden", 404: "Not found",
               409: "Conflict", 413: "Too large", 500: "Internal error", 503: "Queue full"}
_ALWAYS_ERRORS = (401, 403, 500)
#: Operation extension: the largest request body in bytes (413 beyond).
MAX_BODY_KEY = "x-loom-max-body-bytes"
#: Operation extension: ``{settings_field: value}`` of the other limits of the route (see its description).
LIMITS_KEY = "x-loom-limits"


def _schema_of(spec: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    return p.ref(spec) if isinstance(spec, type) else spec


def _parameters(op: Operation) -> list[dict[str, Any]]:
    return [
        {"name": prm.name, "in": prm.where, "required": prm.required or prm.where == "path", "schema": prm.schema,
         **({"description": prm.description} if prm.description else {})}
        for prm in op.params
    ]


def _limits(op: Operation, settings: Settings) -> dict[str, Any]:
    """The size limits of ``op`` as operation fields: extensions, a description and the 413 response."""
    doc: dict[str, Any] = {}
    notes: list[str] = []
    if op.request is not None:
        doc[MAX_BODY_KEY] = (getattr(settings, op.body_limit) if op.body_limit
                             else max_body_bytes(settings.max_upload_bytes))
        notes.append(f"The request body is at most {doc[MAX_BODY_KEY]} bytes (413 beyond).")
    if op.limits:
        doc[LIMITS_KEY] = {name: getattr(settings, name) for name in op.limits}
        notes.extend(f"{name} = {getattr(settings, name)}: {Settings.model_fields[name].description or ''}".strip()
                     for name in op.limits)
    if notes:
        doc["description"] = " ".join(notes)
    return doc


def _operation(op: Operation, path: str, settings: Settings) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.name if path == op.path else f"{op.name}_api",
        "summary": op.summary,
        "tags": [op.tag],
        **_limits(op, settings),
    }
    if op.params:
        doc["parameters"] = _parameters(op)
    if op.request is not None:
        doc["requestBody"] = {"required": op.request_required,
                              "content": {op.request_type: {"schema": _schema_of(op.request)}}}
    ok: dict[str, Any] = {"description": op.response_description}
    if op.response is not None:
        ok["content"] = {ctype: {"schema": _schema_of(op.response)} for ctype in op.response_types}
    responses: dict[str, Any] = {str(op.status): ok}
    too_large = (413,) if op.request is not None else ()
    for status, schema in op.error_bodies.items():
        responses[str(status)] = {"description": _ERROR_TEXT.get(status, "Error"),
                                  "content": {"application/json": {"schema": schema}}}
    for status in (*op.errors, *too_large, *_ALWAYS_ERRORS):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/Error{status}"})
    doc["responses"] = responses
    return doc


def component_schemas() -> dict[str, Any]:
    """Every component schema: the protocol models and the websocket messages."""
    _, defs = models_json_schema([(m, "validation") for m in p.COMPONENT_MODELS], ref_template=p.REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    for name, schema in message_components().items():
        if name in schemas:
            raise RuntimeError(f"two component schemas are named {name!r}")
        schemas[name] = schema
    return schemas


def build_document(version: str, operations: Iterable[Operation], settings: Settings | None = None
                   ) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``, stating the limits of ``settings`` (default: the defaults)."""
    limits = settings if settings is not None else Settings.model_validate({})
    paths: dict[str, Any] = {}
    for op in operations:
        for path in served_paths(op):
            paths.setdefault(path, {})[op.method.lower()] = _operation(op, path, limits)
    responses = {
        f"Error{status}": {"description": text, "content": {"application/json": {"schema": p.ref(p.ErrorResponse)}}}
        for status, text in _ERROR_TEXT.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loom API",
            "version": version,
            "description": (
                "ComfyUI-compatible HTTP and websocket API of Loom. Every route is served at /x and "
                "/api/x. Every 4xx/5xx JSON response has the ErrorResponse shape, except where a route documents "
                "ComfyUI's own error shape for a status (POST /users). With an auth token "
                "configured, send 'Authorization: Bearer <token>' (or ?token= on /ws and /view). "
                "Every request body is bounded (x-loom-max-body-bytes); other limits of a route are listed "
                "in its x-loom-limits and description; a request over a limit gets 413. "
                "Websocket text frames are described by the WsMessage schema."
            ),
        },
        "components": {
            "schemas": component_schemas(),
            "responses": responses,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }
