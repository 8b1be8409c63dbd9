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
from dataclasses import replace
from typing import Any

import ray

from engine.cluster.actor import POLL_WAIT_S, Job, JobResult
from engine.cluster.dispatch import Cancel, Decision, Fail, Release, Situation, Start, Wait, decide
from engine.cluster.needs import PromptNeeds, prompt_needs
from engine.cluster.outputs import OutputStore, input_files
from engine.cluster.pool import START_TIMEOUT_S, WorkerPool
from engine.cluster.state import WorkerState
from engine.events import EventSink, Executed, ExecutionInterrupted, ExecutionStart
from engine.folders import Folders
from engine.lifecycle import end_unrun, finish, prompt_error
from engine.queue import PromptQueue, QueueItem
from engine.registry import NodeRegistry

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # the first run and one retry on another worker
RAN_ON_KEPT = 10_000


class WorkerGone(Exception):
    """The worker's actor is no longer there (killed, or its node lost)."""


class ClusterRunner:
    """Feeds the queue's prompts to the pool's workers; the PromptRunner the server uses on a cluster."""

    def __init__(self, queue: PromptQueue, registry: NodeRegistry, folders: Folders, pool: WorkerPool,
                 sink_for: Callable[[str | None], EventSink], *, check_interval: float = 5.0) -> None:
        self.queue = queue
        self.registry = registry
        self.folders = folders
        self.pool = pool
        self.sink_for = sink_for
        self.check_interval = check_interval
        self.outputs = OutputStore(folders)
        self._changed = pool.table.changed  # the pool's one lock; notified whenever a worker's state changes
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._runs: dict[str, threading.Thread] = {}
        self._waiting: dict[str, int] = {}  # prompt id -> attempt, of prompts waiting for a capable worker
        self._cancelled: set[str] = set()
        self.ran_on: OrderedDict[str, str] = OrderedDict()  # prompt id -> worker id, the latest RAN_ON_KEPT

    # ------------------------------------------------------------------ the PromptRunner interface

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
            targets = [(s.worker_id, s.running) for s in self.pool.all()
                       if s.running is not None and prompt_id in (None, s.running)]
        for worker_id, running in targets:
            actor = self.pool.actor(worker_id)
            if actor is not None:
                actor.interrupt.remote(running)
                hit = True
        return hit

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: each worker frees between prompts (an idle one at once, in the background)."""
        for worker_id in self.pool.table.request_free((unload_models, free_memory)):
            threading.Thread(target=self._free, args=(worker_id,), name="loom-free", daemon=True).start()

    def describe(self) -> list[dict[str, Any]]:
        """The workers as /system_stats lists them under ``loom.workers``."""
        return [state.describe() for state in self.pool.all()]

    def stats(self) -> dict[str, Any]:
        """Nothing runs here: the workers have the executors, caches and models."""
        return {}

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
        return any(s.idle for s in self.pool.all())

    def _dispatch(self, item: QueueItem, attempt: int, excluded: frozenset[str], note: str = "") -> None:
        """Wait for a capable idle worker and start the prompt on it, or end it as :func:`decide` says."""
        needs = prompt_needs(item.prompt, self.registry)
        with self._changed:
            self._waiting[item.prompt_id] = attempt
        try:
            decision = self._await_decision(item.prompt_id, needs, attempt, excluded, note)
        finally:
            with self._changed:
                self._waiting.pop(item.prompt_id, None)
        self._act(decision, item, needs, attempt)

    def _await_decision(self, prompt_id: str, needs: PromptNeeds, attempt: int, excluded: frozenset[str],
                        note: str) -> Decision:
        """Decide until it is no plain wait; a worker chosen is claimed (Running) before the lock is let go."""
        rechecked = False
        while True:
            with self._changed:
                situation = self._situation(prompt_id, needs, attempt, rechecked, note)
                decision = decide(situation, [s for s in self.pool.all() if s.worker_id not in excluded])
                if isinstance(decision, Wait) and not decision.recheck_files:
                    self._changed.wait(0.2)
                    continue
                if isinstance(decision, Start):
                    self._claim(decision.worker, prompt_id)
                if isinstance(decision, Cancel):
                    self._cancelled.discard(prompt_id)
            if not isinstance(decision, Wait):
                return decision
            self.pool.refresh_models()  # the files may have been added since the workers were asked
            rechecked = True

    def _situation(self, prompt_id: str, needs: PromptNeeds, attempt: int, rechecked: bool, note: str) -> Situation:
        return Situation(needs, stopping=self._stop.is_set(), cancelled=prompt_id in self._cancelled,
                         behind_retry=attempt == 1 and any(a > 1 for a in self._waiting.values()),
                         files_rechecked=rechecked, start_error=self._no_worker_can_start(), note=note)

    def _claim(self, worker: WorkerState, prompt_id: str) -> None:
        if not self.pool.table.claim(worker.worker_id, prompt_id):  # decided under this lock: it is idle
            raise RuntimeError(f"worker {worker.worker_id} was chosen for {prompt_id} but is not idle")
        self.ran_on[prompt_id] = worker.worker_id
        while len(self.ran_on) > RAN_ON_KEPT:
            self.ran_on.popitem(last=False)

    def _act(self, decision: Decision, item: QueueItem, needs: PromptNeeds, attempt: int) -> None:
        if isinstance(decision, Start):
            thread = threading.Thread(target=self._run, args=(decision.worker, item, needs, attempt),
                                      name=f"loom-run-{item.prompt_id[:8]}", daemon=True)
            self._runs[item.prompt_id] = thread
            thread.start()
        elif isinstance(decision, Fail):
            self._finish_failed(item, decision.reason, decision.kind)
        elif isinstance(decision, Cancel):
            self._finish_interrupted(item)
        elif isinstance(decision, Release):  # stopping before the prompt started: it runs at the next start
            self.queue.release(item.prompt_id)

    def _no_worker_can_start(self) -> str | None:
        """Why no worker will come, when none is alive or starting because starts fail; else None."""
        if self.pool.alive() or self.pool.starting():
            return None
        return self.pool.start_error

    # ------------------------------------------------------------------ one prompt on one worker

    def _run(self, worker: WorkerState, item: QueueItem, needs: PromptNeeds, attempt: int) -> None:
        try:
            self._run_on(worker, item, needs, attempt)
        finally:
            if self._runs.get(item.prompt_id) is threading.current_thread():
                self._runs.pop(item.prompt_id, None)

    def _run_on(self, worker: WorkerState, item: QueueItem, needs: PromptNeeds, attempt: int) -> None:
        sink = self.sink_for(item.extra_data.get("client_id"))
        try:
            result = self._stream(worker, item, needs, sink, retry=attempt > 1)
        except (ray.exceptions.RayActorError, WorkerGone) as exc:
            self._worker_lost(worker, item, attempt, exc)
            return
        except Exception as exc:  # noqa: BLE001 - record it in history; the front keeps serving
            log.exception("prompt %s failed on worker %s", item.prompt_id, worker.worker_id)
            free = self.pool.table.end_run(worker.worker_id, None)
            self._finish_failed(item, f"worker {worker.worker_id} could not run the prompt: {exc}",
                                type(exc).__name__)
        else:
            free = self.pool.table.end_run(worker.worker_id, result.held)  # before the history: affinity holds
            outputs = self.outputs.rewrite_outputs(worker.worker_id, result.outcome.outputs)
            finish(self.queue, sink, item.prompt_id, replace(result.outcome, outputs=outputs))
        if free:
            self._free(worker.worker_id)

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

    def _free(self, worker_id: str) -> None:
        """Apply the POST /free requests of a Freeing worker; it is Idle again when none is left."""
        while (request := self.pool.table.take_free(worker_id)) is not None:
            actor = self.pool.actor(worker_id)
            try:
                if actor is not None:
                    ray.get(actor.free.remote(*request), timeout=60)
            except Exception:  # noqa: BLE001 - a failed free must not keep the worker from work
                log.exception("worker %s could not free memory", worker_id)

    def _worker_lost(self, worker: WorkerState, item: QueueItem, attempt: int, exc: Exception) -> None:
        reason = f"worker {worker.worker_id} ({worker.node}) died while running the prompt: {type(exc).__name__}"
        self.pool.mark_dead(worker.worker_id, reason)
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
        end_unrun(self.queue, sink, item.prompt_id,
                  prompt_error(item.prompt_id, message, f"loom.cluster.{kind}", traceback.format_stack(limit=1)))

    def _finish_interrupted(self, item: QueueItem) -> None:
        sink = self.sink_for(item.extra_data.get("client_id"))
        end_unrun(self.queue, sink, item.prompt_id,
                  ExecutionInterrupted(prompt_id=item.prompt_id, node_id=None, node_type=None, executed=[]))

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
