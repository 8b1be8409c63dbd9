"""The executor: validate -> schedule -> cache lookup -> run -> store/release -> emit events.

One call of :meth:`Executor.execute` runs one prompt on the calling thread (the worker's). It runs
only what the output nodes need, in the deterministic order of engine/schedule.py. A node whose
cache key is already in the output cache does not run, in this prompt or any later one; nodes
with equal keys inside one prompt run once. Errors stop the prompt with an ``execution_error``
naming node id, class, message and traceback; outputs computed before the error stay cached, so
the cache is consistent and a fixed re-run continues where it failed. Interrupts are cooperative:
checked before every node and whenever a node reports progress.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.cache import OutputCache, cache_key
from engine.context import RunContext
from engine.errors import Interrupted, NodeExecutionError, OutOfMemory, ValidationFailed
from engine.events import (
    STATUS_EVENTS,
    Event,
    EventSink,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
)
from engine.folders import Folders
from engine.node import NodeOutput
from engine.providers import ModelProvider, NoModels
from engine.registry import NodeRegistry
from engine.schedule import Schedule, topological_order
from engine.validate import GraphNode, ValidatedPrompt, node_sort_key, validate_prompt

log = logging.getLogger(__name__)


@dataclass
class ExecutionOutcome:
    """What a prompt run produced: the history entry's parts plus run statistics."""

    status_str: str  # "success" | "error"
    completed: bool
    messages: list[list[Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    interrupted: bool = False
    error: NodeExecutionError | None = None

    def status(self) -> dict[str, Any]:
        return {"status_str": self.status_str, "completed": self.completed, "messages": self.messages}


class _RecordingSink:
    """Forwards events and records the status-level ones for the history entry."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self.messages: list[list[Any]] = []

    def emit(self, event: Event) -> None:
        if event.type in STATUS_EVENTS:
            self.messages.append([event.type, asdict(event)])
        self.sink.emit(event)


class Executor:
    """Runs validated prompts against one registry, one set of folders and one output cache."""

    def __init__(
        self,
        registry: NodeRegistry,
        folders: Folders,
        cache: OutputCache,
        models: ModelProvider | None = None,
        *,
        previews: bool = False,
    ) -> None:
        self.registry = registry
        self.folders = folders
        self.cache = cache
        self.models: ModelProvider = models if models is not None else NoModels()
        self.previews = previews

    def execute(
        self,
        prompt: Mapping[str, Any],
        prompt_id: str,
        sink: EventSink,
        *,
        targets: list[str] | None = None,
        extra_data: Mapping[str, Any] | None = None,
        interrupt: threading.Event | None = None,
    ) -> ExecutionOutcome:
        recorder = _RecordingSink(sink)
        recorder.emit(ExecutionStart(prompt_id=prompt_id))
        try:
            validated = validate_prompt(prompt, self.registry, self.folders, targets)
        except ValidationFailed as exc:
            return _validation_outcome(exc, prompt_id, recorder)
        run = _PromptRun(self, validated, prompt, prompt_id, recorder, extra_data or {},
                         interrupt or threading.Event())
        return run.execute()


def _validation_outcome(exc: ValidationFailed, prompt_id: str, recorder: _RecordingSink) -> ExecutionOutcome:
    first = exc.errors[0]
    recorder.emit(ExecutionError(
        prompt_id=prompt_id, node_id=first.node_id, node_type=first.class_type, executed=[],
        exception_message="; ".join(e.message for e in exc.errors), exception_type="loom.ValidationFailed",
        traceback=[], current_inputs={}, current_outputs=[]))
    return ExecutionOutcome("error", False, recorder.messages)


class _PromptRun:
    """The state of one prompt while it runs. Created per prompt, thrown away after."""

    def __init__(
        self,
        executor: Executor,
        validated: ValidatedPrompt,
        prompt: Mapping[str, Any],
        prompt_id: str,
        sink: _RecordingSink,
        extra_data: Mapping[str, Any],
        interrupt: threading.Event,
    ) -> None:
        self.executor = executor
        self.nodes = validated.nodes
        self.outputs = sorted(validated.outputs, key=node_sort_key)
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.sink = sink
        self.extra_data = extra_data
        self.interrupt = interrupt
        self.inputs_of = {nid: [src for src, _ in node.links.values()] for nid, node in self.nodes.items()}
        self.order = topological_order(self.outputs, self.inputs_of)
        self.keys: dict[str, str] = {}
        self.canonical: dict[str, str] = {}
        self.values: dict[str, tuple[Any, ...]] = {}
        self.outcome = ExecutionOutcome("success", True)

    def execute(self) -> ExecutionOutcome:
        current: str | None = None
        try:
            self._compute_keys()
            schedule = self._plan()
            while schedule.has_ready():
                current = schedule.pop()
                self._run_node(current)
                for released in schedule.done(current):
                    self.values.pop(released, None)
            self._emit_duplicate_outputs()
            self.sink.emit(ExecutionSuccess(prompt_id=self.prompt_id))
        except Interrupted:
            self._interrupted(current)
        except NodeExecutionError as exc:
            self._failed(exc)
        self.outcome.messages = self.sink.messages
        return self.outcome

    def _compute_keys(self) -> None:
        by_key: dict[str, str] = {}
        for node_id in self.order:
            node = self.nodes[node_id]
            fingerprint = self._fingerprint(node)
            links = {name: (self.keys[src], index) for name, (src, index) in node.links.items()}
            key = cache_key(node.cls.type_name, node.cls.version, node.literals, links, fingerprint)
            self.keys[node_id] = key
            self.canonical[node_id] = by_key.setdefault(key, node_id)

    def _fingerprint(self, node: GraphNode) -> str | None:
        if node.cls.always_run:
            return uuid.uuid4().hex
        try:
            return node.cls.fingerprint(self.executor.folders, node.literals)
        except Exception as exc:  # noqa: BLE001 - any failure of a node's own code becomes its error
            raise _node_error(node, exc, {}) from exc

    def _plan(self) -> Schedule:
        """Decide what runs: walk back from the outputs, stopping at cached values (pinned here)."""
        cache = self.executor.cache
        cached = [nid for nid in self.order if self.keys[nid] in cache]
        self.outcome.cached = cached
        self.sink.emit(ExecutionCached(nodes=cached, prompt_id=self.prompt_id))
        to_run: set[str] = set()
        stack = [self.canonical[o] for o in self.outputs]
        seen: set[str] = set()
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            entry = cache.get(self.keys[node_id])
            if entry is not None:
                self.values[node_id] = entry.values
                self._show_output(node_id, entry.ui)
                continue
            to_run.add(node_id)
            stack.extend(self.canonical[src] for src in self.inputs_of[node_id])
        run_order = [nid for nid in self.order if nid in to_run]
        inputs = {nid: [self.canonical[s] for s in self.inputs_of[nid]] for nid in run_order}
        return Schedule(run_order, inputs, available=set(self.values))

    def _run_node(self, node_id: str) -> None:
        if self.interrupt.is_set():
            raise Interrupted(f"interrupted before node {node_id}")
        node = self.nodes[node_id]
        kwargs = dict(node.literals)
        for name, (src, index) in node.links.items():
            kwargs[name] = self.values[self.canonical[src]][index]
        self.sink.emit(Executing(node=node_id, display_node=node_id, prompt_id=self.prompt_id))
        ctx = RunContext(
            node_id=node_id, prompt_id=self.prompt_id, folders=self.executor.folders, sink=self.sink,
            interrupt=self.interrupt, prompt=self.prompt,
            extra_pnginfo=self.extra_data.get("extra_pnginfo") or {}, models=self.executor.models,
            previews=self.executor.previews,
            log=logging.getLogger(f"loom.node.{node.cls.type_name}"))
        try:
            result = self._run_with_oom_retry(node, ctx, kwargs)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a node's own code becomes its error
            raise _node_error(node, exc, kwargs) from exc
        values, ui = _split_result(node, result)
        self.values[node_id] = values
        self.outcome.executed.append(node_id)
        self.executor.cache.put(self.keys[node_id], values, ui)
        self._show_output(node_id, ui)

    def _run_with_oom_retry(self, node: GraphNode, ctx: RunContext, kwargs: dict[str, Any]) -> Any:
        """Run the node; after a device out-of-memory error free memory and run it once more."""
        try:
            return node.cls().run(ctx, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled here; the rest re-raised as is
            if not is_out_of_memory(exc):
                raise
            log.warning("node %s (%s) ran out of device memory; freeing memory and retrying once",
                        node.id, node.cls.type_name)
        self._free_memory()  # outside the except block: the failed call's frames (and tensors) are gone
        return node.cls().run(ctx, **kwargs)

    def _free_memory(self) -> None:
        """Offload models (stepping down a VRAM mode where the manager can) and drop cached outputs
        this prompt does not use."""
        log.warning("out of memory: %s", self.executor.models.recover_from_oom())
        dropped = self.executor.cache.retain(set(self.keys.values()))
        log.info("out of memory: dropped %d cached outputs", dropped)

    def _show_output(self, node_id: str, ui: Mapping[str, Any] | None) -> None:
        if ui is None or not self.nodes[node_id].cls.output_node:
            return
        self.outcome.outputs[node_id] = dict(ui)
        self.outcome.meta[node_id] = {"node_id": node_id, "display_node": node_id,
                                      "parent_node": None, "real_node_id": node_id}
        self.sink.emit(Executed(node=node_id, display_node=node_id, output=dict(ui), prompt_id=self.prompt_id))

    def _emit_duplicate_outputs(self) -> None:
        """Output nodes identical to another one in this prompt show the same result."""
        for out in self.outputs:
            first = self.canonical[out]
            if first != out and first in self.outcome.outputs:
                self._show_output(out, self.outcome.outputs[first])

    def _interrupted(self, node_id: str | None) -> None:
        kind = self.nodes[node_id].cls.type_name if node_id in self.nodes else None
        self.sink.emit(ExecutionInterrupted(prompt_id=self.prompt_id, node_id=node_id, node_type=kind,
                                            executed=list(self.outcome.executed)))
        self.outcome.status_str, self.outcome.completed, self.outcome.interrupted = "error", False, True

    def _failed(self, exc: NodeExecutionError) -> None:
        log.warning("prompt %s failed: %s", self.prompt_id, exc)
        self.sink.emit(ExecutionError(
            prompt_id=self.prompt_id, node_id=exc.node_id, node_type=exc.class_type,
            executed=list(self.outcome.executed), exception_message=exc.message,
            exception_type=exc.exception_type, traceback=exc.traceback_lines,
            current_inputs=exc.current_inputs, current_outputs=sorted(self.values, key=node_sort_key)))
        self.outcome.status_str, self.outcome.completed, self.outcome.error = "error", False, exc


def _split_result(node: GraphNode, result: Any) -> tuple[tuple[Any, ...], Mapping[str, Any] | None]:
    if isinstance(result, NodeOutput):
        values, ui = tuple(result.values), result.ui
    elif isinstance(result, tuple):
        values, ui = result, None
    else:
        raise _contract_error(node, f"run() returned {type(result).__name__}; it must return a tuple "
                              "with one value per output, or a NodeOutput")
    if len(values) != len(node.cls.outputs):
        raise _contract_error(node, f"run() returned {len(values)} value(s) for "
                              f"{len(node.cls.outputs)} declared output(s)")
    return values, ui


def _contract_error(node: GraphNode, message: str) -> NodeExecutionError:
    return NodeExecutionError(node.id, node.cls.type_name, message, exception_type="loom.NodeContractError",
                              traceback_lines=[])


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (torch.OutOfMemoryError; matched by name, no torch here)."""
    return type(exc).__name__ in ("OutOfMemoryError", "OutOfMemory")


def _node_error(node: GraphNode, exc: BaseException, inputs: Mapping[str, Any]) -> NodeExecutionError:
    message = str(exc) or type(exc).__name__
    kind = type(exc)
    exception_type = f"{kind.__module__}.{kind.__qualname__}"
    if is_out_of_memory(exc):
        message = (f"node {node.id} ({node.cls.type_name}) ran out of device memory, also when retried after "
                   f"offloading all models and freeing cached outputs ({message.splitlines()[0][:200]}); "
                   "lower the resolution or batch size, or start Loom with --vram low (or --vram none)")
        exception_type = f"{OutOfMemory.__module__}.{OutOfMemory.__qualname__}"
    return NodeExecutionError(
        node.id, node.cls.type_name, message,
        exception_type=exception_type,
        traceback_lines=traceback.format_exception(exc),
        current_inputs={name: [_describe(value)] for name, value in inputs.items()})


def _describe(value: Any) -> str:
    """A short, safe description of an input value for error reports."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__}(shape={list(shape)}, dtype={getattr(value, 'dtype', '?')})"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
