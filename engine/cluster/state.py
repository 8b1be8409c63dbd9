"""What the front knows of each worker, and the only ways it changes (pure: no Ray).

A worker is :class:`Idle`, :class:`Running` a prompt, :class:`Freeing` memory (POST /free) or
:class:`Dead`. :class:`WorkerTable` holds every worker's :class:`WorkerState` under one lock, the
condition the front's dispatcher waits on; the pool (engine/cluster/pool.py) owns the table and its lock
guards the pool's own bookkeeping too. States are frozen snapshots: the table replaces them, so what a
caller holds never changes under it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

from engine.cluster.needs import PromptNeeds, has_embedding

FreeRequest = tuple[bool, bool]  # (unload_models, free_memory) of POST /free


@dataclass(frozen=True)
class Idle:
    """Ready for a prompt."""


@dataclass(frozen=True)
class Running:
    prompt_id: str


@dataclass(frozen=True)
class Freeing:
    """Unloading models or clearing its cache (POST /free); takes no prompt until done."""


@dataclass(frozen=True)
class Dead:
    reason: str


Activity = Idle | Running | Freeing | Dead
IDLE = Idle()
FREEING = Freeing()


@dataclass(frozen=True)
class WorkerState:
    """What the front knows of one worker."""

    worker_id: str
    models: dict[str, frozenset[str]] = field(default_factory=dict)  # folder -> file names it has
    held: frozenset[tuple[str, str]] = frozenset()  # (folder, name) loaded in its memory
    activity: Activity = IDLE
    prompts_run: int = 0
    node: str = ""  # host, process and device, for messages

    @property
    def alive(self) -> bool:
        return not isinstance(self.activity, Dead)

    @property
    def idle(self) -> bool:
        return isinstance(self.activity, Idle)

    @property
    def running(self) -> str | None:
        """The id of the prompt it runs, if any."""
        return self.activity.prompt_id if isinstance(self.activity, Running) else None

    def has_embeddings(self, needs: PromptNeeds) -> bool:
        files = self.models.get("embeddings", frozenset())
        return all(has_embedding(files, name) for name in needs.embeddings)

    def lacks(self, needs: PromptNeeds) -> list[str]:
        """The model files of ``needs`` this worker does not have, as folder/name."""
        return sorted(f"{folder}/{name}" for folder, name in needs.models
                      if name not in self.models.get(folder, frozenset()))

    def describe(self) -> dict[str, Any]:
        """As /system_stats lists it under ``loom.workers``."""
        return {"worker_id": self.worker_id, "node": self.node, "alive": self.alive, "running": self.running,
                "state": type(self.activity).__name__.lower(), "prompts_run": self.prompts_run,
                "holds": sorted(f"{folder}/{name}" for folder, name in self.held)}


class WorkerTable:
    """Every worker's state and pending POST /free request, under one lock; changes wake the waiters."""

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.RLock())
        self._states: dict[str, WorkerState] = {}
        self._free: dict[str, FreeRequest] = {}  # requests a worker applies at its next chance

    def all(self) -> list[WorkerState]:
        with self.changed:
            return list(self._states.values())

    def get(self, worker_id: str) -> WorkerState | None:
        with self.changed:
            return self._states.get(worker_id)

    def alive(self) -> list[WorkerState]:
        return [state for state in self.all() if state.alive]

    def add(self, state: WorkerState) -> None:
        with self.changed:
            self._put(state)

    def set_models(self, worker_id: str, models: dict[str, frozenset[str]]) -> None:
        with self.changed:
            state = self._states.get(worker_id)
            if state is not None:
                self._put(replace(state, models=models))

    def claim(self, worker_id: str, prompt_id: str) -> bool:
        """Idle -> Running(prompt_id); False when the worker is not idle."""
        with self.changed:
            state = self._states.get(worker_id)
            if state is None or not state.idle:
                return False
            self._put(replace(state, activity=Running(prompt_id)))
            return True

    def end_run(self, worker_id: str, held: frozenset[tuple[str, str]] | None) -> bool:
        """Running -> Freeing when a POST /free waits for it (True: free it now), else Idle. ``held`` is
        what it holds now (None: unknown, kept as it was)."""
        with self.changed:
            state = self._states.get(worker_id)
            if state is None or state.running is None:
                return False
            free = worker_id in self._free
            self._put(replace(state, prompts_run=state.prompts_run + 1, held=state.held if held is None else held,
                              activity=FREEING if free else IDLE))
            return free

    def request_free(self, request: FreeRequest) -> list[str]:
        """POST /free: every alive worker frees at its next chance; the idle ones become Freeing at once
        (their ids are returned: free them now). Workers that unload are near no model from now on."""
        with self.changed:
            idle = []
            for state in self.alive():
                self._free[state.worker_id] = request
                if request[0]:
                    state = replace(state, held=frozenset())
                if state.idle:
                    state = replace(state, activity=FREEING)
                    idle.append(state.worker_id)
                self._put(state)
            return idle

    def take_free(self, worker_id: str) -> FreeRequest | None:
        """The request a Freeing worker applies next; when none is left, it is Idle again (None)."""
        with self.changed:
            state = self._states.get(worker_id)
            if state is None or not isinstance(state.activity, Freeing):
                return None
            request = self._free.pop(worker_id, None)
            if request is None:
                self._put(replace(state, activity=IDLE))
            elif request[0]:
                self._put(replace(state, held=frozenset()))  # a run since the request may have loaded some
            return request

    def mark_dead(self, worker_id: str, reason: str) -> bool:
        """Any -> Dead(reason); False when it was dead already (or unknown)."""
        with self.changed:
            state = self._states.get(worker_id)
            if state is None or not state.alive:
                return False
            self._free.pop(worker_id, None)
            self._put(replace(state, activity=Dead(reason)))
            return True

    def _put(self, state: WorkerState) -> None:
        self._states[state.worker_id] = state
        self.changed.notify_all()
