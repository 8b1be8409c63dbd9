"""Prompts, the queue, history, interrupt, free, and the websocket of execution events.

Queue calls are short sqlite transactions and run inline; converting and validating a submitted
graph runs in the thread pool.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from engine.api import protocol as p
from engine.api.context import ApiContext, blocking
from engine.api.errors import ApiError
from engine.api.operation import Param, route
from engine.api.request import int_query, json_ok, parse_model, read_json
from engine.errors import QueueFull, ValidationFailed
from engine.jsonutil import dumps_compact
from engine.queue import DuplicatePromptId, report_number
from engine.validate import ValidatedPrompt, validate_prompt
from engine.workflow import is_ui_workflow, ui_to_api

_INT = {"type": "integer"}
_STR = {"type": "string"}
#: Header of a GET /history reply that left entries out to stay within max_history_reply_bytes.
TRUNCATED_HEADER = "X-Loom-History-Truncated"


class PromptRoutes:
    """``/prompt``, ``/queue``, ``/history``, ``/interrupt``, ``/free`` and ``/ws``."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    @route("GET", "/prompt", "Queue status: prompts pending plus running.", "queue", response=p.PromptStatus)
    async def get_prompt(self, request: web.Request) -> web.Response:
        return json_ok({"exec_info": {"queue_remaining": self.ctx.queue.remaining()}})

    @route("POST", "/prompt", "Queue a prompt (API format, or an editor workflow as 'prompt' or 'workflow').",
           "queue", request=p.PromptRequest, request_required=True, response=p.PromptResponse,
           errors=(400, 413, 503), limits=("max_extra_data_bytes",))
    async def post_prompt(self, request: web.Request) -> web.Response:
        body = parse_model(p.PromptRequest, await read_json(request, required=True))
        check_extra_data_size(body.extra_data, self.ctx.settings.max_extra_data_bytes)
        graph = body.prompt if body.prompt is not None else body.workflow
        if graph is None:
            raise ApiError(400, "no_prompt", "No prompt provided", "No prompt provided")
        if body.number is not None and not math.isfinite(body.number):
            raise ApiError(400, "invalid_request", "Invalid priority number", "number must be finite")
        try:
            api_prompt, ui_workflow, validated = await blocking(
                self._prepare, graph, body.workflow, body.partial_execution_targets)
        except ValidationFailed as exc:
            return json_ok(exc.to_response(), status=400)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise ApiError(400, "invalid_prompt", "Invalid prompt",
                           f"the prompt could not be read: {type(exc).__name__}: {exc}") from exc
        prompt_id = body.prompt_id or str(uuid.uuid4())
        try:
            number = self.ctx.queue.put(prompt_id, api_prompt, _extra_data(body, ui_workflow), validated.outputs,
                                        number=body.number, front=bool(body.front))
        except QueueFull as exc:
            raise ApiError(503, "queue_full", "The queue is full", str(exc)) from exc
        except DuplicatePromptId as exc:
            raise ApiError(400, "duplicate_prompt_id", "prompt_id already used", str(exc)) from exc
        except ValueError as exc:  # e.g. a priority number the queue cannot order by
            raise ApiError(400, "invalid_request", "Prompt could not be queued", str(exc)[:500]) from exc
        reply: dict[str, Any] = {"prompt_id": prompt_id, "number": report_number(number),
                                 "node_errors": validated.node_errors}
        if validated.warnings:  # inputs the prompt left out that took their default (not in ComfyUI's reply)
            reply["warnings"] = validated.warnings
        return json_ok(reply)

    def _prepare(self, graph: dict[str, Any], workflow: dict[str, Any] | None, targets: list[str] | None
                 ) -> tuple[dict[str, Any], Mapping[str, Any] | None, ValidatedPrompt]:
        """(API prompt, UI workflow or None, validation result); runs in a worker thread."""
        if is_ui_workflow(graph):
            api_prompt: dict[str, Any] = ui_to_api(graph, self.ctx.registry)
            ui_workflow: Mapping[str, Any] | None = graph
        else:
            api_prompt = graph
            ui_workflow = workflow if is_ui_workflow(workflow) else None
        return api_prompt, ui_workflow, validate_prompt(api_prompt, self.ctx.registry, self.ctx.folders, targets)

    @route("GET", "/queue", "Running and pending prompts.", "queue", response=p.QueueResponse)
    async def get_queue(self, request: web.Request) -> web.Response:
        return json_ok({
            "queue_running": [item.as_list() for item in self.ctx.queue.running()],
            "queue_pending": [item.as_list() for item in self.ctx.queue.pending()],
        })

    @route("POST", "/queue", "Clear or delete pending prompts; deleting the running one interrupts it.", "queue",
           request=p.QueueOperation, errors=(400,))
    async def post_queue(self, request: web.Request) -> web.Response:
        op = parse_model(p.QueueOperation, await read_json(request, required=False))
        if op.clear:
            self.ctx.queue.clear()
        if op.delete:
            running = {item.prompt_id for item in self.ctx.queue.running()}
            for prompt_id in running.intersection(op.delete):
                self.ctx.worker.interrupt(prompt_id)  # deleting a running prompt stops it, as in ComfyUI
            self.ctx.queue.delete(op.delete)
        return web.Response(status=200)

    @route("GET", "/history", "Finished prompts, oldest first. A reply holds at most max_history_reply_bytes: "
           "entries beyond it are left out (the oldest, or with offset >= 0 the newest) and the reply carries "
           f"{TRUNCATED_HEADER}: true.", "history", response=p.HISTORY, errors=(400,),
           limits=("max_history", "max_history_reply_bytes"),
           params=(Param("max_items", "query", _INT, "Return at most this many."),
                   Param("offset", "query", _INT, "Skip this many oldest; negative with max_items: the newest "
                         "max_items.")))
    async def get_history(self, request: web.Request) -> web.Response:
        max_items = int_query(request, "max_items")
        offset = int_query(request, "offset")
        # ComfyUI defaults offset to -1: with max_items alone, the newest entries.
        page = await blocking(functools.partial(self.ctx.queue.history_page, max_items,
                                                -1 if offset is None else offset,
                                                max_bytes=self.ctx.settings.max_history_reply_bytes))
        headers = {TRUNCATED_HEADER: "true"} if page.truncated else None
        return web.Response(body=page.body, content_type="application/json", headers=headers)

    @route("POST", "/history", "Clear or delete history entries.", "history", request=p.HistoryOperation,
           errors=(400,))
    async def post_history(self, request: web.Request) -> web.Response:
        op = parse_model(p.HistoryOperation, await read_json(request, required=False))
        if op.clear:
            self.ctx.queue.clear_history()
        if op.delete:
            self.ctx.queue.delete_history(op.delete)
        return web.Response(status=200)

    @route("GET", "/history/{prompt_id}", "One prompt's history entry ({} when unknown).", "history",
           response=p.HISTORY, params=(Param("prompt_id", "path", _STR, required=True),))
    async def get_history_entry(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.ctx.queue.history_entry(prompt_id)
        return json_ok({} if entry is None else {prompt_id: entry})

    @route("POST", "/interrupt", "Interrupt the running prompt (only that one when prompt_id is given).", "queue",
           request=p.InterruptRequest, errors=(400,))
    async def post_interrupt(self, request: web.Request) -> web.Response:
        op = parse_model(p.InterruptRequest, await read_json(request, required=False))
        self.ctx.worker.interrupt(op.prompt_id)
        return web.Response(status=200)

    @route("POST", "/free", "Unload models and/or free cached memory after the current prompt.", "system",
           request=p.FreeRequest, errors=(400,))
    async def post_free(self, request: web.Request) -> web.Response:
        op = parse_model(p.FreeRequest, await read_json(request, required=False))
        self.ctx.worker.request_free(bool(op.unload_models), bool(op.free_memory))
        return web.Response(status=200)

    @route("GET", "/ws", "Websocket of execution events; ?clientId= names the client (?token= for auth).",
           "events", response=p.WS_MESSAGE, response_description="Switching protocols; then WsMessage frames.",
           status=101, errors=(400, 401, 403),
           params=(Param("clientId", "query", _STR, "Client id used as client_id in POST /prompt."),
                   Param("token", "query", _STR, "Auth token when the server requires one."),
                   Param("previews", "query", _STR, "'1': binary preview frames when enabled.")))
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        return await self.ctx.hub.handle(request)


def check_extra_data_size(extra_data: Mapping[str, Any] | None, limit: int) -> None:
    """Refuse (413) an ``extra_data`` larger than ``limit`` bytes of compact JSON: it would be stored in history."""
    if not extra_data:
        return
    size = len(dumps_compact(extra_data).encode())
    if size > limit:
        raise ApiError(413, "extra_data_too_large", "extra_data too large",
                       f"extra_data is {size} bytes of JSON; the limit is {limit} (max_extra_data_bytes). Send "
                       "large data another way (e.g. upload files and pass their names)",
                       {"size": size, "limit": limit})


def _extra_data(body: p.PromptRequest, ui_workflow: Mapping[str, Any] | None) -> dict[str, Any]:
    """The queued extra_data: the client's, with the editor workflow for PNG metadata, the client_id and, as
    ComfyUI stamps it, ``create_time`` (ms since the epoch; the jobs API orders by it)."""
    extra_data = dict(body.extra_data or {})
    extra_data["create_time"] = int(time.time() * 1000)
    if ui_workflow is not None:
        pnginfo = extra_data.get("extra_pnginfo")
        pnginfo = dict(pnginfo) if isinstance(pnginfo, dict) else {}
        pnginfo.setdefault("workflow", ui_workflow)
        extra_data["extra_pnginfo"] = pnginfo
    if body.client_id is not None:
        extra_data["client_id"] = body.client_id
    return extra_data
