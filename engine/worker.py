"""PromptWorker: takes prompts from the queue and runs them on one thread.

The worker is the only link between queue and executor; it knows nothing of sockets. Events go to
``sink_for(client_id)`` (the API's websocket hub, or anything else). A prompt ends through
engine/lifecycle.py, as on a cluster: its history entry, then ``executing`` with ``node=None``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from engine.events import EventSink
from engine.executor import ExecutionOutcome, Executor
from engine.lifecycle import finish, free_memory, run_prompt
from engine.malloc_tuning import release_free_memory
from engine.queue import PromptQueue, QueueItem

log = logging.getLogger(__name__)


class PromptRunner(Protocol):
    """What the server uses of whatever runs the queue: PromptWorker here, ClusterRunner on Ray."""

    def start(self) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only ``prompt_id``, when given); whether one was hit."""
        ...

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: unload models and/or clear cached outputs, between prompts."""
        ...

    def describe(self) -> list[dict[str, Any]] | None:
        """The workers that run prompts, as /system_stats lists them under ``loom.workers``; None where
        prompts run in this process (there are no workers to list)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Figures of the executor in this process for /system_stats' ``loom``: cached outputs and loaded
        models; empty where prompts run elsewhere (a cluster front)."""
        ...


class PromptWorker:
    """Runs queued prompts one at a time on a daemon thread."""

    def __init__(self, queue: PromptQueue, executor: Executor, sink_for: Callable[[str | None], EventSink]) -> None:
        self.queue = queue
        self.executor = executor
        self.sink_for = sink_for
        self._interrupt = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: str | None = None
        self._free_request: tuple[bool, bool] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="loom-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current prompt (which is interrupted)."""
        self._stop.set()
        self._interrupt.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given)."""
        with self._lock:
            if self._running is None or (prompt_id is not None and prompt_id != self._running):
                return False
            self._interrupt.set()
            return True

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """Free models and/or cached outputs between prompts (POST /free)."""
        with self._lock:
            self._free_request = (unload_models, free_memory)
            idle = self._running is None
        if idle:
            self._handle_free()

    def describe(self) -> None:
        """No workers to list: prompts run in this process."""
        return None

    def stats(self) -> dict[str, Any]:
        cache = self.executor.cache
        return {"cache_entries": len(cache), "cache_bytes": cache.nbytes, "models": self.executor.models.stats()}

    def run_once(self, timeout: float | None = None) -> ExecutionOutcome | None:
        """Take one prompt from the queue and run it; None if none came within ``timeout``."""
        item = self.queue.get(timeout)
        if item is None:
            return None
        return self._run(item)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(timeout=0.5)
            except Exception:  # noqa: BLE001 - the worker must survive anything and keep serving
                log.exception("worker loop error; continuing")

    def _run(self, item: QueueItem) -> ExecutionOutcome:
        with self._lock:
            self._running = item.prompt_id
            self._interrupt.clear()
        sink = self.sink_for(item.extra_data.get("client_id"))
        wait = getattr(self.executor.models, "wait_until_built", None)
        if wait is not None:
            wait()  # nodes import the backend: never beside the background import of it
        try:
            outcome = run_prompt(self.executor, item, sink, self._interrupt)
        finally:
            with self._lock:
                self._running = None
        finish(self.queue, sink, item.prompt_id, outcome)
        self._handle_free()
        if self.queue.remaining() == 0:
            release_free_memory()  # the heap keeps freed tensors while prompts run (engine/malloc_tuning.py)
        return outcome

    def _handle_free(self) -> None:
        with self._lock:
            request, self._free_request = self._free_request, None
        if request is not None:
            free_memory(self.executor, *request)
