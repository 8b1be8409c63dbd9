"""Jobs: one view of queued, running and finished prompts, in the shape of ComfyUI's ``/api/jobs``.

A job is a prompt seen by its state: ``pending`` and ``in_progress`` come from the queue, ``completed``,
``failed`` and ``cancelled`` from history (an interrupted prompt is cancelled, any other error failed). A job
summary holds the prompt id, status, priority number, ``create_time`` (ms, stamped when queued), the
execution start and end times and error from the history ``status.messages``, the number of outputs and of
previewable ones, the first previewable output (``preview_output``, an output-folder file first) and the
editor workflow's id. One job's detail adds its outputs, its status record and the prompt with its extra data.

Finished summaries never change, so :class:`JobIndex` keeps them by prompt id and reads from the queue
database only the history entries it has not summarised yet: the frontend lists jobs after every prompt, and a
history of thousands of full entries must not be parsed each time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engine.queue import PromptQueue, QueueItem, report_number, scrub_extra_data

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "pending", "in_progress", "completed", "failed", "cancelled"
JOB_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
FINISHED_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED})
SORT_KEYS = ("created_at", "execution_duration")
#: Output lists the frontend can preview (others count as outputs but are not previewed).
PREVIEWABLE_KINDS = frozenset({"images", "video", "audio", "3d"})
THREE_D_ENDINGS = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
_END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")

SortKey = Literal["created_at", "execution_duration"]


@dataclass(frozen=True)
class JobQuery:
    """``GET /api/jobs``' filters, order and page (statuses of :data:`JOB_STATUSES`)."""

    statuses: frozenset[str] = frozenset(JOB_STATUSES)
    workflow_id: str | None = None
    sort_by: SortKey = "created_at"
    descending: bool = True
    limit: int | None = None
    offset: int = 0


def created_ms(extra_data: Mapping[str, Any]) -> int | None:
    """When the prompt was queued (``extra_data.create_time``, ms), if it says."""
    value = extra_data.get("create_time")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def workflow_id(extra_data: Mapping[str, Any]) -> str | None:
    """The id of the editor workflow the prompt came from (``extra_pnginfo.workflow.id``), if any."""
    pnginfo = extra_data.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, Mapping) else None
    value = workflow.get("id") if isinstance(workflow, Mapping) else None
    return value if isinstance(value, str) else None


def _pruned(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def queued_job(item: QueueItem, status: str) -> dict[str, Any]:
    """The summary of a pending or running prompt."""
    return _pruned({"id": item.prompt_id, "status": status, "priority": report_number(item.number),
                    "create_time": created_ms(item.extra_data) or 0, "outputs_count": 0,
                    "previewable_outputs_count": 0, "workflow_id": workflow_id(item.extra_data)})


def output_items(outputs: Mapping[str, Any]) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
    """``(node_id, kind, index, item)`` for every file-like output (a 3D file's bare name becomes an output-folder
    file); other values (texts, flags such as ``animated``) are left out."""
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, Mapping):
            continue
        for kind, items in node_outputs.items():
            if kind == "animated" or not isinstance(items, list):
                continue
            for index, item in enumerate(items):
                if isinstance(item, str) and item.lower().endswith(THREE_D_ENDINGS):
                    yield node_id, kind, index, {"filename": item, "type": "output", "subfolder": "",
                                                 "mediaType": "3d"}
                elif isinstance(item, dict):
                    yield node_id, kind, index, item


def is_previewable(kind: str, item: Mapping[str, Any]) -> bool:
    if kind in PREVIEWABLE_KINDS:
        return True
    media_format = item.get("format")
    if isinstance(media_format, str) and media_format.startswith(("video/", "audio/")):
        return True
    filename = item.get("filename")
    return isinstance(filename, str) and filename.lower().endswith(THREE_D_ENDINGS)


def outputs_summary(outputs: Mapping[str, Any]) -> tuple[int, int, dict[str, Any] | None]:
    """(outputs, previewable outputs, the output to preview): an output-folder file first, else any."""
    count = previewable = 0
    preview: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None
    for node_id, kind, _, item in output_items(outputs):
        count += 1
        if not is_previewable(kind, item):
            continue
        previewable += 1
        shown = {**item, "nodeId": node_id, "mediaType": item.get("mediaType", kind)}
        if preview is None and item.get("type") == "output":
            preview = shown
        elif fallback is None:
            fallback = shown
    return count, previewable, preview or fallback


@dataclass(frozen=True)
class _Run:
    started: int | None = None
    ended: int | None = None
    error: dict[str, Any] | None = None
    interrupted: bool = False


def _run_of(status: Mapping[str, Any]) -> _Run:
    """Start, end, error and interruption from a history status's messages."""
    started = ended = None
    error: dict[str, Any] | None = None
    interrupted = False
    for message in status.get("messages") or ():
        if not (isinstance(message, list | tuple) and len(message) >= 2 and isinstance(message[1], dict)):
            continue
        name, data = message[0], message[1]
        if name == "execution_start":
            started = data.get("timestamp")
        elif name in _END_EVENTS:
            ended = data.get("timestamp")
            error = data if name == "execution_error" else error
            interrupted = interrupted or name == "execution_interrupted"
    return _Run(started, ended, error, interrupted)


def finished_job(prompt_id: str, entry: Mapping[str, Any], *, detail: bool = False) -> dict[str, Any]:
    """The summary of a history entry (with ``detail``: its outputs, status and prompt too)."""
    number, _, prompt, extra_data, _ = entry["prompt"]
    status_info = entry.get("status") or {}
    run = _run_of(status_info)
    if status_info.get("status_str") == "error":
        status = CANCELLED if run.interrupted else FAILED
    else:
        status = COMPLETED
    outputs = entry.get("outputs") or {}
    count, previewable, preview = outputs_summary(outputs)
    job = _pruned({
        "id": prompt_id, "status": status, "priority": number,
        "create_time": created_ms(extra_data) or run.started or 0,
        "execution_start_time": run.started, "execution_end_time": run.ended, "execution_error": run.error,
        "outputs_count": count, "previewable_outputs_count": previewable, "preview_output": preview,
        "workflow_id": workflow_id(extra_data),
    })
    if detail:
        job["outputs"] = _listed_outputs(outputs)
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": scrub_extra_data(extra_data)}
    return job


def _listed_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs with 3D files' bare names made file entries and empty items dropped."""
    listed: dict[str, Any] = {node_id: dict(node) if isinstance(node, Mapping) else node
                              for node_id, node in outputs.items()}
    for node in listed.values():
        if not isinstance(node, dict):
            continue
        for kind, items in node.items():
            if kind != "animated" and isinstance(items, list):
                node[kind] = [_listed_item(item) for item in items if item is not None]
    return listed


def _listed_item(item: Any) -> Any:
    if isinstance(item, str) and item.lower().endswith(THREE_D_ENDINGS):
        return {"filename": item, "type": "output", "subfolder": "", "mediaType": "3d"}
    return item


def _duration(job: Mapping[str, Any]) -> int:
    start, end = job.get("execution_start_time"), job.get("execution_end_time")
    return int(end - start) if isinstance(start, int | float) and isinstance(end, int | float) else 0


def sort_jobs(jobs: Iterable[dict[str, Any]], sort_by: SortKey, descending: bool) -> list[dict[str, Any]]:
    if sort_by == "execution_duration":
        return sorted(jobs, key=_duration, reverse=descending)
    return sorted(jobs, key=lambda job: job.get("create_time") or 0, reverse=descending)


class JobIndex:
    """Jobs of one queue: summaries of finished prompts are kept by prompt id (see the module docstring)."""

    def __init__(self, queue: PromptQueue) -> None:
        self.queue = queue
        self._finished: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def finished(self) -> list[dict[str, Any]]:
        """Every finished prompt's summary, oldest first."""
        ids = self.queue.history_ids()
        with self._lock:
            known = self._finished
            missing = [prompt_id for prompt_id in ids if prompt_id not in known]
        loaded: dict[str, dict[str, Any]] = {}
        for prompt_id in missing:
            entry = self.queue.history_entry(prompt_id)
            if entry is not None:
                loaded[prompt_id] = finished_job(prompt_id, entry)
        with self._lock:
            self._finished = {prompt_id: summary for prompt_id in ids
                              if (summary := self._finished.get(prompt_id) or loaded.get(prompt_id)) is not None}
            return list(self._finished.values())

    def jobs(self, query: JobQuery) -> tuple[list[dict[str, Any]], int]:
        """The page of jobs ``query`` asks for, and how many match it in all."""
        jobs: list[dict[str, Any]] = []
        if IN_PROGRESS in query.statuses:
            jobs += [queued_job(item, IN_PROGRESS) for item in self.queue.running()]
        if PENDING in query.statuses:
            jobs += [queued_job(item, PENDING) for item in self.queue.pending()]
        if query.statuses & FINISHED_STATUSES:
            jobs += [job for job in self.finished() if job["status"] in query.statuses]
        if query.workflow_id:
            jobs = [job for job in jobs if job.get("workflow_id") == query.workflow_id]
        jobs = sort_jobs(jobs, query.sort_by, query.descending)
        page = jobs[max(query.offset, 0):]
        return (page if query.limit is None else page[:query.limit]), len(jobs)

    def job(self, prompt_id: str) -> dict[str, Any] | None:
        """One job in detail (a finished one) or as a summary (a queued one); None when unknown."""
        entry = self.queue.history_entry(prompt_id)
        if entry is not None:
            return finished_job(prompt_id, entry, detail=True)
        for status, items in ((IN_PROGRESS, self.queue.running()), (PENDING, self.queue.pending())):
            for item in items:
                if item.prompt_id == prompt_id:
                    return queued_job(item, status)
        return None
