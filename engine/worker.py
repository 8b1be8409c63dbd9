"""PromptWorker: takes prompts from the queue and runs them on one thread.

The worker is the only link between queue and executor; it knows nothing of sockets. Events go to
``sink_for(client_id)`` (the API's websocket hub, or anything else). After a prompt finishes, its
history entry is written and then ``executing`` with ``node=None`` marks the end, as ComfyUI does.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

from engine.events import EventSink, Executing, ExecutionError
from engine.executor import ExecutionOutcome, Executor
from engine.queue import PromptQueue, QueueItem

log = logging.getLogger(__name__)


class PromptRunner(Protocol):
    """What the server needs of whatever runs the queue: PromptWorker here, ClusterRunner on Ray."""

    def start(self) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...
    def interrupt(self, prompt_id: str | None = None) -> bool: ...
    def request_free(self, unload_models: bool, free_memory: bool) -> None: ...


class PromptWorker:
    """Runs queued prompts one at a time on a daemon thread."""

    def __init__(
        self,
        queue: PromptQueue,
        executor: Executor,
        sink_for: Callable[[str | None], EventSink],
        *,
        on_free: Callable[[bool, bool], None] | None = None,
    ) -> None:
        self.queue = queue
        self.executor = executor
        self.sink_for = sink_for
        self.on_free = on_free
        self._interrupt = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: str | None = None
        self._free_request: tuple[bool, bool] | None = None
        self._thread: threading.Thread | None = None

    @property
    def running_prompt_id(self) -> str | None:
        return self._running

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
        if self._running is None:
            self._handle_free()

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
        try:
            outcome = run_item(self.executor, item, sink, self._interrupt)
        finally:
            with self._lock:
                self._running = None
        self.queue.finish(item.prompt_id, outputs=outcome.outputs, status=outcome.status(), meta=outcome.meta)
        sink.emit(Executing(node=None, display_node=None, prompt_id=item.prompt_id))
        self._handle_free()
        return outcome

    def _handle_free(self) -> None:
        with self._lock:
            request, self._free_request = self._free_request, None
        if request is None:
            return
        unload_models, free_memory = request
        if free_memory:
            self.executor.cache.clear()
        models = self.executor.models
        if unload_models and models is not None and hasattr(models, "unload_all"):
            models.unload_all()
        if self.on_free is not None:
            self.on_free(unload_models, free_memory)


def run_item(executor: Executor, item: QueueItem, sink: EventSink, interrupt: threading.Event) -> ExecutionOutcome:
    """Run one queued prompt; an engine bug becomes an execution_error and an error outcome, never a raise."""
    try:
        return executor.execute(item.prompt, item.prompt_id, sink, targets=item.outputs,
                                extra_data=item.extra_data, interrupt=interrupt)
    except Exception as exc:  # noqa: BLE001 - record any engine bug in history instead of losing it
        log.exception("prompt %s crashed the executor", item.prompt_id)
        return _crashed_outcome(item.prompt_id, exc, sink)


def _crashed_outcome(prompt_id: str, exc: Exception, sink: EventSink) -> ExecutionOutcome:
    event = ExecutionError(
        prompt_id=prompt_id, node_id=None, node_type=None, executed=[],
        exception_message=f"internal error in Loom: {exc}; please report it",
        exception_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        traceback=traceback.format_exception(exc), current_inputs={}, current_outputs=[])
    sink.emit(event)
    return ExecutionOutcome("error", False, messages=[[event.type, asdict(event)]])
