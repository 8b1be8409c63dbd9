"""The worker side of the cluster: one LoomWorker per Ray actor, with its own executor, models and cache.

The front wraps this class with ``ray.remote`` (engine/cluster/pool.py); nothing here imports Ray, so it
is tested and used as a plain object too. A prompt arrives as a :class:`Job` with the input files it
names; ``submit`` starts it on a thread and the front long-polls ``poll`` for its events as they happen,
in batches, up to the :class:`JobResult` that ends it (plain actor calls, so a front connected through
Ray Client, ``ray://``, works too). Images an event or the outcome names travel with it as bytes,
through Ray's object store, and the front saves them. The worker's input/output/temp folders are a
private scratch directory; model names resolve in the worker's own model roots.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from engine.cache import OutputCache
from engine.events import Event, Executed
from engine.executor import ExecutionOutcome, Executor
from engine.files import FileStore
from engine.folders import Folders
from engine.lifecycle import crash_error, ended_by, free_memory, run_prompt
from engine.malloc_tuning import tune_malloc
from engine.queue import QueueItem
from engine.registry import NodeRegistry
from engine.settings import Settings

log = logging.getLogger(__name__)

BUILTIN_NODES = "nodes:register_builtin_nodes"
POLL_WAIT_S = 1.0  # how long a poll waits for a prompt's next message
POLL_BATCH = 256  # messages per poll at most


class WorkerConfig(BaseModel):
    """How to build one worker: the front's :class:`Settings` (model roots, device, memory and cache budgets,
    previews, node modules, CPUs; paths resolved on the worker's machine) and what is the worker's own."""

    model_config = ConfigDict(frozen=True)

    worker_id: str
    settings: Settings
    scratch_dir: str | None = None  # its input/output/temp folders (default: a new temporary directory)

    @property
    def node_modules(self) -> list[str]:
        """The built-in nodes, then each ``--extra-nodes`` module ("module:function", or a module's register)."""
        return [BUILTIN_NODES, *self.settings.extra_nodes]

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.settings.worker_cpus))

    def on_device(self, device: str) -> WorkerConfig:
        return self.model_copy(update={"settings": self.settings.model_copy(update={"device": device})})


@dataclass(frozen=True)
class ShippedFile:
    """A file of the input/output/temp folders, by kind, subfolder and name, with its bytes."""

    kind: str
    subfolder: str
    filename: str
    data: bytes


@dataclass(frozen=True)
class Job:
    item: QueueItem
    files: list[ShippedFile] = field(default_factory=list)
    models: frozenset[tuple[str, str]] = frozenset()  # (folder, name) the prompt names


@dataclass(frozen=True)
class EventMessage:
    event: Event
    files: list[ShippedFile] = field(default_factory=list)


@dataclass(frozen=True)
class JobResult:
    """How the prompt ended (the front finishes it with engine/lifecycle.py), the files its outputs name that
    were not sent yet, and the model files the worker holds now."""

    outcome: ExecutionOutcome
    files: list[ShippedFile]
    held: frozenset[tuple[str, str]]


def build_registry(node_modules: list[str]) -> NodeRegistry:
    """A registry filled by each ``module:function`` (or ``module`` with ``register``) in turn."""
    registry = NodeRegistry()
    for entry in node_modules:
        module_name, _, function = entry.partition(":")
        getattr(importlib.import_module(module_name), function or "register")(registry)
    return registry


class _Mailbox:
    """The messages of one prompt, from the executor's thread to the front's ``poll`` calls."""

    def __init__(self, worker: LoomWorker) -> None:
        self.worker = worker
        self.messages: queue.Queue[EventMessage | JobResult] = queue.Queue()
        self.shipped: set[tuple[str, str, str]] = set()  # (kind, subfolder, name) already sent

    def emit(self, event: Event) -> None:  # the EventSink of the prompt's run
        files = self.worker.output_files(event.output, self.shipped) if isinstance(event, Executed) else []
        self.messages.put(EventMessage(event, files))


class LoomWorker:
    """One worker: runs one prompt at a time (the front sends no second), interruptible from another call."""

    def __init__(self, config: WorkerConfig) -> None:
        import torch  # torch only here, on the worker

        from engine.models.manager import ModelManager, pick_device

        torch.set_num_threads(config.torch_threads)
        self.config = config
        settings = config.settings
        if settings.malloc_tuning:  # Ray's threads already have their arenas; the thresholds still apply
            tune_malloc()
        scratch = Path(config.scratch_dir or tempfile.mkdtemp(prefix=f"loom-{config.worker_id}-"))
        self.folders = Folders(scratch / "input", scratch / "output", scratch / "temp", tuple(settings.models_dirs))
        self.folders.ensure()
        self.registry = build_registry(config.node_modules)
        if not settings.disable_custom_nodes:  # the same ComfyUI custom node packs as the front
            from engine.custom_nodes.packs import load_packs

            load_packs(settings.custom_nodes_dirs, self.registry, self.folders)
        self.models = ModelManager(pick_device(settings.device), vram=settings.vram_mode,
                                   vram_budget=settings.vram_budget, ram_budget=settings.ram_budget)
        self.executor = Executor(self.registry, self.folders, OutputCache(settings.cache_bytes, settings.cache_entries),
                                 self.models, previews=settings.preview_method != "none",
                                 preview_method=settings.preview_method)
        self._interrupts: dict[str, threading.Event] = {}
        self._mailboxes: dict[str, _Mailbox] = {}
        self._early_interrupts: OrderedDict[str, None] = OrderedDict()  # interrupts that overtook their submit
        self._held: frozenset[tuple[str, str]] = frozenset()
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """Id, host, process, device and the model files of every folder a node input names."""
        folders = sorted({"embeddings"} | {spec.file_folder for name in self.registry.names()
                                           for spec in self.registry.get(name).inputs  # type: ignore[union-attr]
                                           if spec.file_folder and spec.file_folder != "input"})
        return {"worker_id": self.config.worker_id, "node": socket.gethostname(), "pid": os.getpid(),
                "device": str(self.executor.models.device),
                "models": {folder: self.folders.list_models(folder) for folder in folders},
                "held": sorted(self._held)}

    def submit(self, job: Job) -> None:
        """Start the job's prompt on a thread of its own; the front collects its messages with :meth:`poll`."""
        self._write_files(job.files)
        mailbox = _Mailbox(self)
        interrupt = threading.Event()
        with self._lock:
            if job.item.prompt_id in self._early_interrupts:
                del self._early_interrupts[job.item.prompt_id]
                interrupt.set()
            self._mailboxes[job.item.prompt_id] = mailbox
            self._interrupts[job.item.prompt_id] = interrupt
        threading.Thread(target=self._execute, args=(job, mailbox, interrupt),
                         name=f"loom-run-{job.item.prompt_id[:8]}", daemon=True).start()

    def poll(self, prompt_id: str, wait: float = POLL_WAIT_S) -> list[EventMessage | JobResult]:
        """The prompt's messages since the last poll: waits up to ``wait`` s for the first, then takes what
        is there. The last message of a prompt is its :class:`JobResult`."""
        with self._lock:
            mailbox = self._mailboxes.get(prompt_id)
        if mailbox is None:
            raise KeyError(f"worker {self.config.worker_id} runs no prompt {prompt_id}")
        try:
            batch: list[EventMessage | JobResult] = [mailbox.messages.get(timeout=wait)]
        except queue.Empty:
            return []
        while len(batch) < POLL_BATCH and not isinstance(batch[-1], JobResult):
            try:
                batch.append(mailbox.messages.get_nowait())
            except queue.Empty:
                break
        if isinstance(batch[-1], JobResult):
            with self._lock:
                self._mailboxes.pop(prompt_id, None)
        return batch

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt a running prompt (all when None). The front's calls may overtake each other, so an
        interrupt for a prompt not submitted yet is kept for it."""
        with self._lock:
            targets = [e for pid, e in self._interrupts.items() if prompt_id is None or pid == prompt_id]
            if not targets and prompt_id is not None:
                self._early_interrupts[prompt_id] = None
                while len(self._early_interrupts) > 100:
                    self._early_interrupts.popitem(last=False)
        for event in targets:
            event.set()
        return bool(targets)

    def free(self, unload_models: bool, clear_cache: bool) -> None:
        """POST /free, between prompts (the front sends it to an idle worker only)."""
        free_memory(self.executor, unload_models, clear_cache)
        if unload_models:
            self._held = frozenset()

    def pid(self) -> int:
        return os.getpid()

    # ------------------------------------------------------------------ internals

    def _execute(self, job: Job, mailbox: _Mailbox, interrupt: threading.Event) -> None:
        try:
            outcome = run_prompt(self.executor, job.item, mailbox, interrupt)
            self._held = self._still_loaded(self._held | job.models)
            result = JobResult(replace(outcome, error=None),  # the outcome without its exception, for pickling
                               self._outcome_files(outcome.outputs, mailbox.shipped), self._held)
            self._empty_shipped(mailbox.shipped)
            mailbox.messages.put(result)
        except Exception as exc:  # noqa: BLE001 - the front must hear of it, or it would wait for ever
            log.exception("prompt %s: could not report its result", job.item.prompt_id)
            mailbox.messages.put(JobResult(ended_by(crash_error(job.item.prompt_id, exc), mailbox), [], self._held))
        finally:
            with self._lock:
                self._interrupts.pop(job.item.prompt_id, None)

    def _write_files(self, files: list[ShippedFile]) -> None:
        """Write shipped files; one already there with the same bytes is left alone (its mtime, and so the
        cache fingerprint of LoadImage, stays)."""
        store = FileStore(self.folders)
        for shipped in files:
            store.put(shipped.kind, shipped.filename, shipped.data, subfolder=shipped.subfolder)

    def output_files(self, output: Mapping[str, Any], shipped: set[tuple[str, str, str]]) -> list[ShippedFile]:
        """The output/temp files a node's output names that were not sent yet, with their bytes."""
        files = []
        for entries in output.values():
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, Mapping) or "filename" not in entry:
                    continue
                kind = str(entry.get("type", "output"))
                key = (kind, str(entry.get("subfolder", "")), str(entry["filename"]))
                if kind not in ("output", "temp") or key in shipped:
                    continue
                path = self.folders.file_path(kind, key[2], key[1])
                if path.is_file() and path.stat().st_size > 0:  # empty: shipped before (see _empty_shipped)
                    shipped.add(key)
                    files.append(ShippedFile(key[0], key[1], key[2], path.read_bytes()))
        return files

    def _outcome_files(self, outputs: Mapping[str, Any], shipped: set[tuple[str, str, str]]) -> list[ShippedFile]:
        files: list[ShippedFile] = []
        for output in outputs.values():
            if isinstance(output, Mapping):
                files += self.output_files(output, shipped)
        return files

    def _empty_shipped(self, shipped: set[tuple[str, str, str]]) -> None:
        """The front has the bytes of the files it was sent: keep each here as an empty file, so the worker's
        disk does not fill up over days while its name stays taken (SaveImage's counter never hands it out
        again, and the front's memory of worker names stays right for cached re-runs)."""
        for kind, subfolder, filename in shipped:
            try:
                self.folders.file_path(kind, filename, subfolder).open("wb").close()
            except OSError as exc:
                log.warning("could not empty shipped file %s/%s/%s: %s", kind, subfolder, filename, exc)

    def _still_loaded(self, candidates: frozenset[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        """The (folder, name) model files among ``candidates`` whose weights the manager still holds."""
        loaded = {entry["path"] for entry in self.models.loaded()}
        held = set()
        for folder, name in candidates:
            try:
                path = str(self.folders.model_path(folder, name).resolve())
            except (FileNotFoundError, ValueError, OSError):
                continue
            if path in loaded:
                held.add((folder, name))
        return frozenset(held)
