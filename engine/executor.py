"""The executor: validate -> schedule -> cache lookup -> run -> store/release -> emit events.

One call of :meth:`Executor.execute` runs one prompt on the calling thread (the worker's); the
prompt's state while it runs lives in engine/prompt_run.py. It runs only what the output nodes
need, in the deterministic order of engine/schedule.py. A node whose cache key is already in the
output cache does not run, in this prompt or any later one; nodes with equal keys inside one
prompt run once. Errors stop the prompt with an ``execution_error`` naming node id, class,
message and traceback; outputs computed before the error stay cached, so the cache is consistent
and a fixed re-run continues where it failed. Interrupts are cooperative: checked before every
node and whenever a node reports progress.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.cache import OutputCache
from engine.errors import Interrupted, NodeExecutionError, ValidationFailed
from engine.events import (
    STATUS_EVENTS,
    Event,
    EventSink,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
)
from engine.folders import Folders
from engine.prompt_run import PromptRun
from engine.providers import ModelProvider, NoModels
from engine.registry import NodeRegistry
from engine.validate import node_sort_key, validate_prompt

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


class RecordingSink:
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
        preview_method: str = "latent2rgb",
    ) -> None:
        self.registry = registry
        self.folders = folders
        self.cache = cache
        self.models: ModelProvider = models if models is not None else NoModels()
        self.previews = previews
        self.preview_method = preview_method

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
        recorder = RecordingSink(sink)
        recorder.emit(ExecutionStart(prompt_id=prompt_id))
        try:
            validated = validate_prompt(prompt, self.registry, self.folders, targets)
        except ValidationFailed as exc:
            return _validation_outcome(exc, prompt_id, recorder)
        for warning in validated.warnings:
            log.warning("prompt %s: %s", prompt_id, warning["message"])
        outcome = ExecutionOutcome("success", True)
        run = PromptRun(self, validated, prompt, prompt_id, recorder, extra_data or {},
                        interrupt or threading.Event(), outcome)
        try:
            run.execute()
        except Interrupted:
            _interrupted(run, outcome, recorder)
        except NodeExecutionError as exc:
            _failed(run, outcome, recorder, exc)
        outcome.messages = recorder.messages
        return outcome


def _validation_outcome(exc: ValidationFailed, prompt_id: str, recorder: RecordingSink) -> ExecutionOutcome:
    first = exc.errors[0]
    recorder.emit(ExecutionError(
        prompt_id=prompt_id, node_id=first.node_id, node_type=first.class_type, executed=[],
        exception_message="; ".join(e.message for e in exc.errors), exception_type="loom.ValidationFailed",
        traceback=[], current_inputs={}, current_outputs=[]))
    return ExecutionOutcome("error", False, recorder.messages)


def _interrupted(run: PromptRun, outcome: ExecutionOutcome, sink: RecordingSink) -> None:
    node_id = run.current
    kind = run.nodes[node_id].cls.type_name if node_id in run.nodes else None
    sink.emit(ExecutionInterrupted(prompt_id=run.prompt_id, node_id=node_id, node_type=kind,
                                   executed=list(outcome.executed)))
    outcome.status_str, outcome.completed, outcome.interrupted = "error", False, True


def _failed(run: PromptRun, outcome: ExecutionOutcome, sink: RecordingSink, exc: NodeExecutionError) -> None:
    log.warning("prompt %s failed: %s", run.prompt_id, exc)
    sink.emit(ExecutionError(
        prompt_id=run.prompt_id, node_id=exc.node_id, node_type=exc.class_type,
        executed=list(outcome.executed), exception_message=exc.message,
        exception_type=exc.exception_type, traceback=exc.traceback_lines,
        current_inputs=exc.current_inputs, current_outputs=sorted(run.values, key=node_sort_key)))
    outcome.status_str, outcome.completed, outcome.error = "error", False, exc
