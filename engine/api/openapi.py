"""The route table and the OpenAPI 3.1 document derived from it.

:data:`OPERATIONS` is the single list of Loom's HTTP routes: :mod:`engine.api.server` registers a
handler for each (at ``/x`` and ``/api/x``) and refuses to start if one lacks a handler, and
:func:`build_document` turns the same list, plus the pydantic models of
:mod:`engine.api.protocol`, into the document served at ``/openapi.json``. A route cannot exist
without being documented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from engine.api import protocol as p

API_PREFIXES: tuple[str, ...] = ("", "/api")
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" or "path"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One route: method, path (without the /api prefix) and what it takes and gives."""

    method: str
    path: str
    name: str
    summary: str
    tag: str
    request: type[BaseModel] | None = None
    request_type: str = "application/json"
    request_required: bool = False
    response: type[BaseModel] | dict[str, Any] | None = None
    response_type: str = "application/json"
    response_description: str = "OK"
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    status: int = 200
    prefixed: bool = True  # also served under /api
    extra: dict[str, Any] = field(default_factory=dict)


_STR = {"type": "string"}
_INT = {"type": "integer"}
_STR_LIST = {"type": "array", "items": _STR}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _map_of(model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": _ref(model)}


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/prompt", "get_prompt", "Queue status: prompts pending plus running.", "queue",
              response=p.PromptStatus),
    Operation("POST", "/prompt", "post_prompt",
              "Queue a prompt (API format, or an editor workflow as 'prompt' or 'workflow').", "queue",
              request=p.PromptRequest, request_required=True, response=p.PromptResponse,
              errors=(400, 503)),
    Operation("GET", "/queue", "get_queue", "Running and pending prompts.", "queue", response=p.QueueResponse),
    Operation("POST", "/queue", "post_queue", "Clear or delete pending prompts; deleting the running one "
              "interrupts it.", "queue", request=p.QueueOperation, response=None, errors=(400,)),
    Operation("GET", "/history", "get_history", "Finished prompts, oldest first.", "history",
              response=_map_of(p.HistoryEntry), errors=(400,),
              params=(Param("max_items", "query", _INT, "Return at most this many."),
                      Param("offset", "query", _INT, "Skip this many oldest; negative with max_items: "
                            "the newest max_items."))),
    Operation("POST", "/history", "post_history", "Clear or delete history entries.", "history",
              request=p.HistoryOperation, response=None, errors=(400,)),
    Operation("GET", "/history/{prompt_id}", "get_history_entry",
              "One prompt's history entry ({} when unknown).", "history", response=_map_of(p.HistoryEntry),
              params=(Param("prompt_id", "path", _STR, required=True),)),
    Operation("POST", "/interrupt", "post_interrupt",
              "Interrupt the running prompt (only that one when prompt_id is given).", "queue",
              request=p.InterruptRequest, response=None, errors=(400,)),
    Operation("POST", "/free", "post_free", "Unload models and/or free cached memory after the "
              "current prompt.", "system", request=p.FreeRequest, response=None, errors=(400,)),
    Operation("GET", "/view", "view", "Download a file from the input, output or temp folder.", "files",
              response={"type": "string", "format": "binary"}, response_type="application/octet-stream",
              errors=(400, 403, 404),
              params=(Param("filename", "query", _STR, "File name; may end in ' [input]' etc.", True),
                      Param("type", "query", {"enum": ["input", "output", "temp"], "default": "output"}),
                      Param("subfolder", "query", _STR),
                      Param("preview", "query", _STR, "Re-encode: 'webp;90' or 'jpeg;90'."),
                      Param("channel", "query", {"enum": ["rgba", "rgb", "a"]}, "Image channels."))),
    Operation("POST", "/upload/image", "upload_image", "Upload an image into input/output/temp.", "files",
              request=p.UploadForm, request_type="multipart/form-data", request_required=True,
              response=p.UploadResponse, errors=(400, 403, 413)),
    Operation("POST", "/upload/mask", "upload_mask",
              "Upload a mask: its alpha is written into the original image (original_ref).", "files",
              request=p.UploadForm, request_type="multipart/form-data", request_required=True,
              response=p.UploadResponse, errors=(400, 403, 404, 413)),
    Operation("GET", "/object_info", "object_info", "Every node class's schema.", "nodes",
              response=_map_of(p.NodeInfo)),
    Operation("GET", "/object_info/{node_class}", "object_info_node", "One node class's schema ({} when "
              "unknown).", "nodes", response=_map_of(p.NodeInfo),
              params=(Param("node_class", "path", _STR, required=True),)),
    Operation("GET", "/system_stats", "system_stats", "System, Python, torch and device information.",
              "system", response=p.SystemStats),
    Operation("GET", "/embeddings", "embeddings", "Embedding names (extension stripped).", "models",
              response=_STR_LIST),
    Operation("GET", "/models", "model_folders", "Model folder names.", "models", response=_STR_LIST),
    Operation("GET", "/models/{folder}", "models_in_folder", "Model files in a folder.", "models",
              response=_STR_LIST, errors=(404,),
              params=(Param("folder", "path", _STR, required=True),)),
    Operation("GET", "/features", "features", "Server feature flags.", "system", response=p.FeatureFlags),
    Operation("GET", "/extensions", "extensions", "Frontend extension scripts (none).", "system",
              response=_STR_LIST),
    Operation("GET", "/ws", "websocket",
              "Websocket of execution events; ?clientId= names the client (?token= for auth).", "events",
              response=p.WsMessage, response_description="Switching protocols; then WsMessage frames.",
              status=101, errors=(400, 401, 403),
              params=(Param("clientId", "query", _STR, "Client id used as client_id in POST /prompt."),
                      Param("token", "query", _STR, "Auth token when the server requires one."),
                      Param("previews", "query", _STR, "'1': binary preview frames when enabled."))),
    Operation("GET", "/openapi.json", "openapi", "This document.", "system",
              response={"type": "object"}),
    Operation("GET", "/", "index", "The graph editor (index.html of the frontend folder).", "frontend",
              response={"type": "string"}, response_type="text/html", prefixed=False),
    Operation("GET", "/frontend/{path}", "frontend_file", "The editor's static files.", "frontend",
              response={"type": "string", "format": "binary"}, response_type="application/octet-stream",
              errors=(404,), prefixed=False,
              params=(Param("path", "path", _STR, required=True),)),
    Operation("GET", "/loom/default-workflow", "default_workflow",
              "The editor workflow opened on first visit (workflows/txt2img.json).", "frontend",
              response={"type": "object"}, errors=(404,), prefixed=False),
    Operation("POST", "/loom/workflow/api", "workflow_to_api",
              "An editor workflow (the body) converted to the API format, as POST /prompt would queue it.",
              "frontend", response={"type": "object"}, errors=(400,), prefixed=False),
    Operation("POST", "/loom/workflow/editor", "workflow_to_editor",
              "An API-format prompt (the body) laid out as an editor workflow, for opening API files in the editor.",
              "frontend", response={"type": "object"}, errors=(400,), prefixed=False),
)

_ERROR_TEXT = {400: "Bad request", 401: "Authentication required", 403: "Forbidden", 404: "Not found",
               413: "Too large", 500: "Internal error", 503: "Queue full"}

_COMPONENT_MODELS: tuple[type[BaseModel], ...] = (
    p.ErrorResponse, p.PromptRequest, p.PromptResponse, p.PromptStatus, p.QueueResponse, p.QueueOperation,
    p.HistoryOperation, p.HistoryEntry, p.InterruptRequest, p.FreeRequest, p.UploadForm,
    p.UploadResponse, p.NodeInfo, p.SystemStats, p.FeatureFlags, p.WsMessage, p.ClientFeatureFlags,
    p.FileRef,
)


def served_paths(op: Operation) -> list[str]:
    """The URL paths an operation is served at (``/x`` and ``/api/x`` unless it is unprefixed)."""
    return [prefix + op.path for prefix in API_PREFIXES] if op.prefixed else [op.path]


def _schema_of(spec: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    return _ref(spec) if isinstance(spec, type) else spec


def _operation(op: Operation, path: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.name if path == op.path else f"{op.name}_api",
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.params:
        doc["parameters"] = [
            {"name": prm.name, "in": prm.where, "required": prm.required or prm.where == "path",
             "schema": prm.schema, **({"description": prm.description} if prm.description else {})}
            for prm in op.params
        ]
    if op.request is not None:
        doc["requestBody"] = {"required": op.request_required,
                              "content": {op.request_type: {"schema": _ref(op.request)}}}
    ok: dict[str, Any] = {"description": op.response_description}
    if op.response is not None:
        ok["content"] = {op.response_type: {"schema": _schema_of(op.response)}}
    responses: dict[str, Any] = {str(op.status): ok}
    for status in (*op.errors, 401, 403, 500):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/Error{status}"})
    doc["responses"] = responses
    return doc


def build_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in :data:`OPERATIONS`."""
    _, defs = models_json_schema([(m, "validation") for m in _COMPONENT_MODELS], ref_template=_REF)
    schemas = defs.get("$defs", {})
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        for path in served_paths(op):
            paths.setdefault(path, {})[op.method.lower()] = _operation(op, path)
    responses = {
        f"Error{status}": {"description": text,
                           "content": {"application/json": {"schema": _ref(p.ErrorResponse)}}}
        for status, text in _ERROR_TEXT.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loom API",
            "version": version,
            "description": (
                "ComfyUI-compatible HTTP and websocket API of Loom. Every route is served at /x and "
                "/api/x. Every 4xx/5xx JSON response has the ErrorResponse shape. With an auth token "
                "configured, send 'Authorization: Bearer <token>' (or ?token= on /ws and /view)."
            ),
        },
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }
