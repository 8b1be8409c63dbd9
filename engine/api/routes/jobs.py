"""``/api/jobs``: ComfyUI's jobs API, which its newer frontend reads for the queue and the assets panels.

Listing filters by status (comma-separated, of pending, in_progress, completed, failed, cancelled) and
workflow id, sorts by ``created_at`` or ``execution_duration`` (``sort_order`` asc or desc, newest first by
default) and pages with ``limit`` and ``offset``; ``pagination.has_more`` says whether a later page exists.
One job (``/jobs/{job_id}``) carries its outputs and prompt once it finished. A job's files are listed as
assets (``/jobs/{job_id}/assets``), and pending or running jobs can be cancelled one by one or in batches of
up to 100. The summaries are built by :mod:`engine.jobs`.
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from engine.api.context import ApiContext, blocking
from engine.api.errors import ApiError
from engine.api.operation import Param, route
from engine.api.request import int_query, json_ok, read_json
from engine.jobs import JOB_STATUSES, SORT_KEYS, JobIndex, JobQuery, SortKey, output_items

_STR = {"type": "string"}
_INT = {"type": "integer"}
_OBJECT = {"type": "object"}
_JOB_ID = Param("job_id", "path", _STR, required=True)
#: Most jobs one batch cancel takes (the frontend's own bound).
MAX_CANCEL_BATCH = 100


def _bad(title: str, detail: str) -> ApiError:
    return ApiError(400, "invalid_request", title, detail)


def job_query(request: web.Request) -> JobQuery:
    """The listing request's filters, order and page, or a 400 naming the parameter."""
    query = request.query
    statuses = frozenset(JOB_STATUSES)
    if query.get("status"):
        asked = [part.strip().lower() for part in query["status"].split(",") if part.strip()]
        unknown = [status for status in asked if status not in JOB_STATUSES]
        if unknown:
            raise _bad("Invalid status", f"unknown status {', '.join(unknown)}; use any of {', '.join(JOB_STATUSES)}")
        statuses = frozenset(asked)
    sort_by = query.get("sort_by", "created_at").lower()
    if sort_by not in SORT_KEYS:
        raise _bad("Invalid sort_by", f"sort_by must be one of {', '.join(SORT_KEYS)}")
    sort_order = query.get("sort_order", "desc").lower()
    if sort_order not in ("asc", "desc"):
        raise _bad("Invalid sort_order", "sort_order must be asc or desc")
    limit = int_query(request, "limit")
    if limit is not None and limit <= 0:
        raise _bad("Invalid limit", "limit must be a positive integer")
    offset = max(int_query(request, "offset") or 0, 0)
    sort_key: SortKey = "execution_duration" if sort_by == "execution_duration" else "created_at"
    return JobQuery(statuses, query.get("workflow_id") or None, sort_key, sort_order == "desc", limit, offset)


def job_assets(prompt_id: str, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The files a finished job wrote, one asset each, with a /view link to preview them."""
    assets = []
    for node_id, kind, index, item in output_items(job.get("outputs") or {}):
        filename = item.get("filename")
        if not isinstance(filename, str):
            continue
        link = {"filename": filename, "subfolder": item.get("subfolder") or "", "type": item.get("type") or "output"}
        assets.append({
            "id": f"{prompt_id}:{node_id}:{kind}:{index}", "name": filename,
            "preview_url": "/api/view?" + urlencode(link), "mime_type": mimetypes.guess_type(filename)[0],
            "node_id": node_id, "output_key": kind, "output_index": index,
        })
    return assets


class JobRoutes:
    """``/jobs``, ``/jobs/{job_id}``, its assets, and cancelling (see the module docstring)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.index = JobIndex(ctx.queue)

    @route("GET", "/jobs", "Jobs (queued, running, finished) filtered, sorted and paged: {jobs, pagination}.",
           "queue", response=_OBJECT, errors=(400,),
           params=(Param("status", "query", _STR, "Comma-separated: pending, in_progress, completed, failed, "
                         "cancelled (default all)."),
                   Param("workflow_id", "query", _STR, "Only jobs of this editor workflow."),
                   Param("sort_by", "query", _STR, "created_at (default) or execution_duration."),
                   Param("sort_order", "query", _STR, "desc (default) or asc."),
                   Param("limit", "query", _INT, "At most this many (positive)."),
                   Param("offset", "query", _INT, "Skip this many.")))
    async def list_jobs(self, request: web.Request) -> web.Response:
        query = job_query(request)
        jobs, total = await blocking(self.index.jobs, query)
        return json_ok({"jobs": jobs, "pagination": {"offset": query.offset, "limit": query.limit, "total": total,
                                                     "has_more": query.offset + len(jobs) < total}})

    @route("GET", "/jobs/{job_id}", "One job; a finished one with its outputs, status and prompt.", "queue",
           response=_OBJECT, errors=(404,), params=(_JOB_ID,))
    async def get_job(self, request: web.Request) -> web.Response:
        return json_ok(await self._job(request.match_info["job_id"]))

    @route("GET", "/jobs/{job_id}/assets", "The files a job wrote, paged: {job_id, assets, pagination}.", "queue",
           response=_OBJECT, errors=(400, 404),
           params=(_JOB_ID, Param("limit", "query", _INT, "At most this many."),
                   Param("offset", "query", _INT, "Skip this many.")))
    async def get_job_assets(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["job_id"]
        assets = job_assets(prompt_id, await self._job(prompt_id))
        offset = max(int_query(request, "offset") or 0, 0)
        limit = int_query(request, "limit")
        page = assets[offset:] if limit is None else assets[offset:offset + max(limit, 0)]
        return json_ok({"job_id": prompt_id, "assets": page, "pagination": {
            "offset": offset, "limit": limit, "total": len(assets), "has_more": offset + len(page) < len(assets)}})

    @route("POST", "/jobs/{job_id}/cancel", "Cancel a pending job or stop the running one: {cancelled: [id]}, or "
           "{cancelled: []} when it has already finished.", "queue", response=_OBJECT, errors=(404,),
           params=(_JOB_ID,))
    async def cancel_job(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["job_id"]
        if self._cancel(prompt_id):
            return json_ok({"cancelled": [prompt_id]})
        if self.ctx.queue.history_entry(prompt_id) is not None:
            return json_ok({"cancelled": []})
        raise ApiError(404, "not_found", "Job not found", f"no job {prompt_id} is queued, running or in history")

    @route("POST", "/jobs/cancel", f"Cancel up to {MAX_CANCEL_BATCH} jobs ({{job_ids: [...]}}): the ids that were "
           "pending or running.", "queue", request=_OBJECT, request_required=True, response=_OBJECT, errors=(400,))
    async def cancel_jobs(self, request: web.Request) -> web.Response:
        body = await read_json(request, required=True)
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not (isinstance(ids, list) and 1 <= len(ids) <= MAX_CANCEL_BATCH
                and all(isinstance(job_id, str) for job_id in ids)):
            raise _bad("Invalid job_ids", f"send {{\"job_ids\": [...]}} with 1 to {MAX_CANCEL_BATCH} job id strings")
        return json_ok({"cancelled": [job_id for job_id in dict.fromkeys(ids) if self._cancel(job_id)]})

    async def _job(self, prompt_id: str) -> dict[str, Any]:
        job = await blocking(self.index.job, prompt_id)
        if job is None:
            raise ApiError(404, "not_found", "Job not found", f"no job {prompt_id} is queued, running or in history")
        return job

    def _cancel(self, prompt_id: str) -> bool:
        """Remove a pending prompt or interrupt the running one; whether it was either."""
        if self.ctx.queue.delete([prompt_id]):
            return True
        return any(item.prompt_id == prompt_id for item in self.ctx.queue.running()) and \
            self.ctx.worker.interrupt(prompt_id)
