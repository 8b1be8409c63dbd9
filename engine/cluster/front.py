"""ClusterRunner: the front's replacement for PromptWorker when Loom runs on a Ray cluster.

The queue stays on the front. A dispatcher thread takes prompts in the queue's order and hands each to
a worker chosen by engine/cluster/dispatch.py; a thread per running prompt long-polls the worker for its
events and passes them to the websocket hub unchanged, saves the images that come back and writes the
history entry, then sends ``executing`` with ``node=None`` as one machine does. A worker that dies
mid-prompt is replaced and the prompt retried once on another worker before it is recorded as failed
with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import ray

from engine.cluster.actor import POLL_WAIT_S, Job, JobResult
from engine.cluster.dispatch import WorkerState, choose_worker
from engine.cluster.needs import PromptNeeds, prompt_needs
from engine.cluster.outputs import OutputStore, input_files
from engine.cluster.pool import START_TIMEOUT_S, WorkerPool
from engine.events import EventSink, Executed, Executing, ExecutionError, ExecutionInterrupted, ExecutionStart
from engine.folders import Folders
from engine.queue import PromptQueue, QueueItem
from engine.registry import NodeRegistry

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # the first run and one retry on another worker
FREEING = "(freeing memory)"  # busy_with of a worker that is running POST /free, not a prompt
RAN_ON_KEPT = 10_000


class WorkerGone(Exception):
    """The worker's actor is no longer there (killed, or its node lost)."""


class ClusterRunner:
    """Feeds the queue's prompts to the pool's workers; the PromptWorker interface for the server."""

    def __init__(self, queue: PromptQueue, registry: NodeRegistry, folders: Folders, pool: WorkerPool,
                 sink_for: Callable[[str | None], EventSink], *, check_interval: float = 5.0) -> None:
        self.queue = queue
        self.registry = registry
        self.folders = folders
        self.pool = pool
        self.sink_for = sink_for
        self.check_interval = check_interval
        self.outputs = OutputStore(folders)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._runs: dict[str, threading.Thread] = {}
        self._waiting: dict[str, int] = {}  # prompt id -> attempt, of prompts waiting for a capable worker
        self._cancelled: set[str] = set()
        self._free: dict[str, tuple[bool, bool]] = {}
        self.ran_on: OrderedDict[str, str] = OrderedDict()  # prompt id -> worker id, the latest RAN_ON_KEPT

    # ------------------------------------------------------------------ the PromptWorker interface

    def start(self) -> None:
        if self._threads:
            return
        self.pool.scale(wait=START_TIMEOUT_S)
        for target, name in ((self._dispatch_loop, "loom-dispatch"), (self._check_loop, "loom-pool-check")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.interrupt(None)
        with self._changed:
            self._changed.notify_all()
        for thread in [*self._threads, *list(self._runs.values())]:
            thread.join(timeout)
        self._threads = []
        self.pool.shutdown()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt a running prompt (every running one when None) on the worker that runs it."""
        hit = False
        with self._changed:
            waiting = [pid for pid in self._waiting if prompt_id in (None, pid)]
            if waiting:
                self._cancelled.update(waiting)
                self._changed.notify_all()
                hit = True
            targets = [(s.worker_id, s.busy_with) for s in self.pool.all()
                       if s.busy_with not in (None, FREEING) and prompt_id in (None, s.busy_with)]
        for worker_id, running in targets:
            actor = self.pool.actor(worker_id)
            if actor is not None:
                actor.interrupt.remote(running)
                hit = True
        return hit

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: each worker frees between prompts (an idle one at once, in the background)."""
        with self._changed:
            idle = []
            for state in self.pool.all():
                if not state.alive:
                    continue
                self._free[state.worker_id] = (unload_models, free_memory)
                if unload_models:
                    state.held = frozenset()  # it unloads before its next prompt: it is near no model
                if state.busy_with is None:
                    state.busy_with = FREEING  # no prompt goes to it until it has freed
                    idle.append(state)
        for state in idle:
            threading.Thread(target=self._free_idle, args=(state,), name="loom-free", daemon=True).start()

    def describe(self) -> list[dict[str, Any]]:
        """The workers as /system_stats shows them."""
        with self._changed:
            return [{"worker_id": s.worker_id, "node": s.node, "alive": s.alive, "running": s.busy_with,
                     "prompts_run": s.prompts_run, "holds": sorted(f"{f}/{n}" for f, n in s.held)}
                    for s in self.pool.all()]

    # ------------------------------------------------------------------ dispatch

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._any_idle_worker() and not self._no_worker_can_start():
                    with self._changed:
                        self._changed.wait(0.2)
                    continue
                item = self.queue.get(timeout=0.2)
                if item is not None:
                    self._dispatch(item, attempt=1, excluded=frozenset())
            except Exception:  # noqa: BLE001 - the dispatcher must survive anything and keep serving
                log.exception("dispatcher error; continuing")

    def _any_idle_worker(self) -> bool:
        with self._changed:
            return any(s.alive and s.busy_with is None for s in self.pool.all())

    def _dispatch(self, item: QueueItem, attempt: int, excluded: frozenset[str], note: str = "") -> None:
        """Wait for a capable idle worker and start the prompt on it, or record why none can run it."""
        needs = prompt_needs(item.prompt, self.registry)
        refreshed = False
        with self._changed:
            self._waiting[item.prompt_id] = attempt
        try:
            while not self._stop.is_set():
                with self._changed:
                    if item.prompt_id in self._cancelled:
                        self._cancelled.discard(item.prompt_id)
                        self._finish_interrupted(item)
                        return
                    if attempt == 1 and any(a > 1 for a in self._waiting.values()):
                        self._changed.wait(0.2)  # a retried prompt was queued earlier: it goes first
                        continue
                    workers = [s for s in self.pool.all() if s.worker_id not in excluded]
                    decision = choose_worker(needs, workers)
                    if decision.worker is not None:
                        worker = decision.worker
                        worker.busy_with = item.prompt_id
                        self.ran_on[item.prompt_id] = worker.worker_id
                        while len(self.ran_on) > RAN_ON_KEPT:
                            self.ran_on.popitem(last=False)
                        break
                    if not decision.error:
                        cannot_start = self._no_worker_can_start()
                        if cannot_start:
                            self._finish_failed(item, f"{note}no worker is running: {cannot_start}", "NoWorker")
                            return
                        self._changed.wait(0.2)
                        continue
                if not refreshed:  # the files may have been added since the workers were asked
                    self.pool.refresh_models()
                    refreshed = True
                    continue
                self._finish_failed(item, f"{note}{decision.error}", "WorkerLacksModel")
                return
            else:  # stopping before the prompt started: back to the queue for the next start
                self.queue.release(item.prompt_id)
                return
        finally:
            with self._changed:
                self._waiting.pop(item.prompt_id, None)
        thread = threading.Thread(target=self._run, args=(worker, item, needs, attempt),
                                  name=f"loom-run-{item.prompt_id[:8]}", daemon=True)
        self._runs[item.prompt_id] = thread
        thread.start()

    def _no_worker_can_start(self) -> str | None:
        """Why no worker will come, when none is alive or starting because starts fail; else None."""
        if self.pool.alive() or self.pool.starting():
            return None
        return self.pool.start_error

    # ------------------------------------------------------------------ one prompt on one worker

    def _run(self, worker: WorkerState, item: QueueItem, needs: PromptNeeds, attempt: int) -> None:
        sink = self.sink_for(item.extra_data.get("client_id"))
        result: JobResult | None = None
        try:
            result = self._stream(worker, item, needs, sink, retry=attempt > 1)
        except (ray.exceptions.RayActorError, WorkerGone) as exc:
            self._worker_lost(worker, item, attempt, exc)
            return
        except Exception as exc:  # noqa: BLE001 - record it in history; the front keeps serving
            log.exception("prompt %s failed on worker %s", item.prompt_id, worker.worker_id)
            self._release(worker, None)
            self._finish_failed(item, f"worker {worker.worker_id} could not run the prompt: {exc}",
                                type(exc).__name__)
            return
        finally:
            self._runs.pop(item.prompt_id, None)
        self._release(worker, result)
        outputs = self.outputs.rewrite_outputs(worker.worker_id, result.outputs)
        self.queue.finish(item.prompt_id, outputs=outputs, status=result.status, meta=result.meta)
        sink.emit(Executing(node=None, display_node=None, prompt_id=item.prompt_id))

    def _stream(self, worker: WorkerState, item: QueueItem, needs: PromptNeeds, sink: EventSink,
                retry: bool = False) -> JobResult:
        """Run the prompt on the worker, passing its events on; a retry's execution_start is not sent again."""
        actor = self.pool.actor(worker.worker_id)
        if actor is None:
            raise WorkerGone(worker.worker_id)
        job = Job(item, input_files(self.folders, needs), needs.models)
        ray.get(actor.submit.remote(job))
        while True:
            for message in ray.get(actor.poll.remote(item.prompt_id, POLL_WAIT_S)):
                if isinstance(message, JobResult):
                    self.outputs.save(worker.worker_id, message.files)
                    return message
                self.outputs.save(worker.worker_id, message.files)
                event = message.event
                if retry and isinstance(event, ExecutionStart):
                    continue  # the client saw the prompt start on the worker that died
                if isinstance(event, Executed):
                    event = replace(event, output=self.outputs.rewrite(worker.worker_id, event.output))
                sink.emit(event)

    def _release(self, worker: WorkerState, result: JobResult | None) -> None:
        """The prompt is done: note what the worker holds, let it free memory if asked, then it is idle."""
        with self._changed:
            worker.prompts_run += 1
            if result is not None:
                worker.held = result.held
        self._free_idle(worker)

    def _free_idle(self, worker: WorkerState) -> None:
        try:
            self._apply_free(worker.worker_id)
        except Exception:  # noqa: BLE001 - a failed free must not keep the worker from work
            log.exception("worker %s could not free memory", worker.worker_id)
        finally:
            with self._changed:
                worker.busy_with = None
                self._changed.notify_all()

    def _worker_lost(self, worker: WorkerState, item: QueueItem, attempt: int, exc: Exception) -> None:
        reason = f"worker {worker.worker_id} ({worker.node}) died while running the prompt: {type(exc).__name__}"
        self.pool.mark_dead(worker.worker_id, reason)
        with self._changed:
            worker.busy_with = None
            self._changed.notify_all()
        if not self._stop.is_set():
            self.pool.scale()  # a replacement, which joins once Ray has room for it
        if attempt >= MAX_ATTEMPTS or self._stop.is_set():
            self._finish_failed(item, f"{reason}; it had been retried once already", "WorkerDied")
            return
        log.warning("%s; retrying it on another worker", reason)
        self._dispatch(item, attempt + 1, frozenset({worker.worker_id}), note=f"{reason}; on retry: ")

    # ------------------------------------------------------------------ endings without a worker's result

    def _finish_failed(self, item: QueueItem, message: str, kind: str) -> None:
        sink = self.sink_for(item.extra_data.get("client_id"))
        event = ExecutionError(prompt_id=item.prompt_id, node_id=None, node_type=None, executed=[],
                               exception_message=message, exception_type=f"loom.cluster.{kind}",
                               traceback=traceback.format_stack(limit=1), current_inputs={}, current_outputs=[])
        sink.emit(event)
        self.queue.finish(item.prompt_id, outputs={},
                          status={"status_str": "error", "completed": False,
                                  "messages": [[event.type, _event_data(event)]]})
        sink.emit(Executing(node=None, display_node=None, prompt_id=item.prompt_id))

    def _finish_interrupted(self, item: QueueItem) -> None:
        sink = self.sink_for(item.extra_data.get("client_id"))
        event = ExecutionInterrupted(prompt_id=item.prompt_id, node_id=None, node_type=None, executed=[])
        sink.emit(event)
        self.queue.finish(item.prompt_id, outputs={},
                          status={"status_str": "error", "completed": False,
                                  "messages": [[event.type, _event_data(event)]]})
        sink.emit(Executing(node=None, display_node=None, prompt_id=item.prompt_id))

    # ------------------------------------------------------------------ pool upkeep

    def _check_loop(self) -> None:
        next_check = time.monotonic() + self.check_interval
        while not self._stop.wait(0.2):
            try:
                started = self.pool.poll_starting() if self.pool.starting() else []
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.check_interval
                    self.pool.check()
                    started += self.pool.scale()
                if started:
                    with self._changed:
                        self._changed.notify_all()
            except Exception:  # noqa: BLE001 - upkeep must go on
                log.exception("worker pool check failed; trying again later")

    def _apply_free(self, worker_id: str) -> None:
        with self._changed:
            request = self._free.pop(worker_id, None)
            if request is not None and request[0]:
                for state in self.pool.all():
                    if state.worker_id == worker_id:
                        state.held = frozenset()  # it unloads its models: nothing to be near any more
        actor = self.pool.actor(worker_id)
        if request is not None and actor is not None:
            ray.get(actor.free.remote(*request), timeout=60)


def _event_data(event: Any) -> dict[str, Any]:
    return asdict(event)
