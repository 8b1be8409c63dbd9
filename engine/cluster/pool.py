"""The Ray actors behind the front: how many, started where, replaced when they die.

One actor per GPU of the Ray cluster (``num_gpus=1``), or, on a cluster without GPUs, one per
``worker_cpus`` CPUs; ``max_workers`` caps either. :meth:`WorkerPool.scale` starts what is missing,
so workers on machines that join the cluster later are started at the next check. Starting never
blocks: an actor waits inside Ray until there is room and joins the pool once it has described itself.
The pool owns the workers' states (:class:`engine.cluster.state.WorkerTable`); the table's lock guards the
pool's own bookkeeping too, so one lock covers everything the front knows of its workers.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from engine.cluster.actor import LoomWorker, WorkerConfig
from engine.cluster.state import WorkerState, WorkerTable
from engine.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # how long start() waits for the first workers
START_WARNING_S = 60.0
START_BACKOFF_S = 5.0  # the wait after a failed start, doubled on each failure in a row
MAX_BACKOFF_S = 300.0  # a worker still waiting for room after this is logged


@dataclass
class PoolOptions:
    max_workers: int | None = Settings.model_fields["cluster_workers"].default
    worker_cpus: float = Settings.model_fields["worker_cpus"].default
    use_gpus: bool = True  # one worker per GPU when the cluster has GPUs
    max_concurrency: int = 4  # run + interrupt/free/describe calls beside it


class WorkerPool:
    """Actor handles and the workers' states (:attr:`table`); thread-safe."""

    def __init__(self, make_config: Callable[[str], WorkerConfig], options: PoolOptions | None = None) -> None:
        self.make_config = make_config
        self.options = options or PoolOptions()
        self.table = WorkerTable()
        self.actors: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._lock = self.table.changed  # one lock for the states and the pool's bookkeeping
        self._starting: dict[str, _Starting] = {}
        self.start_error: str | None = None  # why the last worker start failed, until one succeeds
        self._backoff = 0.0
        self._next_start = 0.0
        self._remote = ray.remote(LoomWorker)

    def desired(self) -> int:
        """Workers the cluster's resources call for, now."""
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = gpus if gpus and self.options.use_gpus else int(resources.get("CPU", 0) // self.options.worker_cpus)
        if self.options.max_workers is not None:
            count = min(count, self.options.max_workers)
        return max(count, 1)

    def scale(self, wait: float = 0.0) -> list[WorkerState]:
        """Start the workers that :meth:`desired` calls for beyond the alive and starting ones.

        Nothing blocks on a start: an actor waits in Ray until the cluster has room for it. Returns the
        workers that became ready within ``wait`` seconds (see :meth:`poll_starting`)."""
        desired = self.desired()  # asks Ray: outside the lock
        with self._lock:
            missing = desired - len(self.alive()) - len(self._starting)
            if time.monotonic() < self._next_start:  # the last start failed: wait before trying again
                missing = 0
        for _ in range(max(missing, 0)):
            self._launch()
        return self.poll_starting(wait)

    def all(self) -> list[WorkerState]:
        return self.table.all()

    def alive(self) -> list[WorkerState]:
        return self.table.alive()

    def starting(self) -> int:
        with self._lock:
            return len(self._starting)

    def _launch(self) -> None:
        worker_id = f"w{next(self._ids)}"
        gpus = 1 if self.options.use_gpus and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        config = self.make_config(worker_id)
        if gpus:
            config = config.on_device("cuda")
        actor: Any = self._remote.options(  # Ray's ActorHandle types methods without their .remote
            num_cpus=0 if gpus else self.options.worker_cpus, num_gpus=gpus, max_restarts=0,
            max_concurrency=self.options.max_concurrency, name=f"loom-{worker_id}-{id(self):x}",
        ).remote(config)
        with self._lock:
            self._starting[worker_id] = _Starting(actor, actor.describe.remote(), time.monotonic())
        log.info("worker %s starting (%s)", worker_id, "1 GPU" if gpus else f"{self.options.worker_cpus} CPU")

    def poll_starting(self, wait: float = 0.0) -> list[WorkerState]:
        """Workers whose actor has started and described itself (waiting up to ``wait`` s for them)."""
        with self._lock:
            starting = dict(self._starting)
        if not starting:
            return []
        refs = {entry.described: worker_id for worker_id, entry in starting.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=wait)
        started = [state for ref in ready if (state := self._register(refs[ref], ref)) is not None]
        now = time.monotonic()
        for worker_id, entry in starting.items():
            if entry.described not in ready and now - entry.since > START_WARNING_S and not entry.warned:
                entry.warned = True
                log.warning("worker %s has waited %.0f s for room in the Ray cluster (resources free: %s)",
                            worker_id, now - entry.since, ray.available_resources())
        return started

    def _register(self, worker_id: str, described: Any) -> WorkerState | None:
        with self._lock:
            entry = self._starting.pop(worker_id, None)
        if entry is None:
            return None
        try:
            info = ray.get(described, timeout=0)
        except ray.exceptions.RayError as exc:
            self._start_failed(worker_id, exc)
            _kill(entry.actor)
            return None
        state = WorkerState(worker_id, models=_model_files(info),
                            node=f"{info['node']} (pid {info['pid']}, {info['device']})")
        with self._lock:
            self.actors[worker_id] = entry.actor
            self.table.add(state)
            self.start_error, self._backoff = None, 0.0
        log.info("worker %s started on %s", worker_id, state.node)
        return state

    def _start_failed(self, worker_id: str, exc: Exception) -> None:
        """Note why, and wait longer before each next start (5 s doubling up to 5 min): a worker that
        cannot start (Loom not at the front's path on its machine, a node module missing) fails again."""
        cause = next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), type(exc).__name__)
        with self._lock:
            self.start_error = f"worker {worker_id} did not start: {cause}"
            self._backoff = min(max(self._backoff * 2, START_BACKOFF_S), MAX_BACKOFF_S)
            self._next_start = time.monotonic() + self._backoff
        log.warning("%s; next try in %.0f s\n%s", self.start_error, self._backoff, exc)

    def mark_dead(self, worker_id: str, reason: str) -> None:
        """The worker is gone (or must be): Dead, and its actor killed."""
        with self._lock:
            if not self.table.mark_dead(worker_id, reason):
                return
            actor = self.actors.pop(worker_id, None)
        log.warning("worker %s is gone: %s", worker_id, reason)
        if actor is not None:
            _kill(actor)

    def check(self) -> list[str]:
        """Ping idle workers; mark those that do not answer dead. Their ids."""
        with self._lock:
            idle = [(s.worker_id, self.actors[s.worker_id]) for s in self.table.all()
                    if s.idle and s.worker_id in self.actors]
        dead = []
        for worker_id, actor in idle:
            try:
                ray.get(actor.pid.remote(), timeout=30)
            except ray.exceptions.RayError as exc:  # a timeout too
                self.mark_dead(worker_id, f"no answer to a ping: {type(exc).__name__}")
                dead.append(worker_id)
        return dead

    def refresh_models(self) -> None:
        """Ask every alive worker for its model lists again (files may have been added)."""
        with self._lock:
            actors = list(self.actors.items())  # the alive workers' (the dead ones' are dropped)
        for worker_id, actor in actors:
            try:
                info = ray.get(actor.describe.remote(), timeout=30)
            except ray.exceptions.RayError:  # a timeout too
                continue
            self.table.set_models(worker_id, _model_files(info))

    def actor(self, worker_id: str) -> Any:
        with self._lock:
            return self.actors.get(worker_id)

    def shutdown(self) -> None:
        with self._lock:
            actors = [*self.actors.values(), *(entry.actor for entry in self._starting.values())]
            self.actors, self._starting = {}, {}
            for state in self.table.alive():
                self.table.mark_dead(state.worker_id, "the front stopped")
        for actor in actors:
            _kill(actor)


@dataclass
class _Starting:
    """An actor that Ray has been asked for and that has not yet described itself."""

    actor: Any
    described: Any  # ObjectRef of its describe()
    since: float
    warned: bool = False


def _model_files(described: dict[str, Any]) -> dict[str, frozenset[str]]:
    """Folder -> file names, from a worker's describe()."""
    return {folder: frozenset(names) for folder, names in described["models"].items()}


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor)
    except (ValueError, ray.exceptions.RayError):
        pass  # already dead
