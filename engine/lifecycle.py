"""One prompt's lifecycle around the executor: run it, end it without running it, finish it, free after it.

The local worker (engine/worker.py), the cluster's worker actor (engine/cluster/actor.py) and the cluster
front (engine/cluster/front.py) all go through these functions, so a prompt ends the same way wherever it
ran: the event that ended it when the executor did not (a crash, no worker for it, a cancel), then its
history entry, then ``executing`` with ``node=None``, which tells clients it is over (ComfyUI's order).
"""

from __future__ import annotations

import gc
import logging
import threading
import traceback
from dataclasses import asdict

from engine.events import EventSink, Executing, ExecutionError, ExecutionInterrupted
from engine.executor import ExecutionOutcome, Executor
from engine.memory_trim import return_free_memory
from engine.queue import PromptQueue, QueueItem

log = logging.getLogger(__name__)

Ending = ExecutionError | ExecutionInterrupted


def run_prompt(executor: Executor, item: QueueItem, sink: EventSink, interrupt: threading.Event) -> ExecutionOutcome:
    """Run one queued prompt; an engine bug becomes an execution_error and an error outcome, never a raise."""
    try:
        return executor.execute(item.prompt, item.prompt_id, sink, targets=item.outputs,
                                extra_data=item.extra_data, interrupt=interrupt)
    except Exception as exc:  # noqa: BLE001 - record any engine bug in history instead of losing it
        log.exception("prompt %s crashed the executor", item.prompt_id)
        return ended_by(crash_error(item.prompt_id, exc), sink)


def prompt_error(prompt_id: str, message: str, exception_type: str, trace: list[str]) -> ExecutionError:
    """An execution_error that names no node: the prompt as a whole could not run."""
    return ExecutionError(prompt_id=prompt_id, node_id=None, node_type=None, executed=[],
                          exception_message=message, exception_type=exception_type, traceback=trace,
                          current_inputs={}, current_outputs=[])


def crash_error(prompt_id: str, exc: Exception) -> ExecutionError:
    """The execution_error of a bug in Loom itself (not in a node): asks for a report."""
    return prompt_error(prompt_id, f"internal error in Loom: {exc}; please report it",
                        f"{type(exc).__module__}.{type(exc).__qualname__}", traceback.format_exception(exc))


def ended_by(event: Ending, sink: EventSink) -> ExecutionOutcome:
    """Send ``event``, which ends a prompt the executor did not end, and return the error outcome recording it."""
    sink.emit(event)
    return ExecutionOutcome("error", False, messages=[[event.type, asdict(event)]],
                            interrupted=isinstance(event, ExecutionInterrupted))


def finish(queue: PromptQueue, sink: EventSink, prompt_id: str, outcome: ExecutionOutcome) -> None:
    """Write the prompt's history entry, then send ``executing`` with ``node=None``: the prompt is over."""
    queue.finish(prompt_id, outputs=outcome.outputs, status=outcome.status(), meta=outcome.meta)
    sink.emit(Executing(node=None, display_node=None, prompt_id=prompt_id))


def end_unrun(queue: PromptQueue, sink: EventSink, prompt_id: str, event: Ending) -> None:
    """End a prompt that no executor ran (no worker could run it, or it was cancelled while waiting)."""
    finish(queue, sink, prompt_id, ended_by(event, sink))


def free_memory(executor: Executor, unload_models: bool, clear_cache: bool) -> None:
    """POST /free on one executor, between prompts: drop cached outputs and/or unload every model, then
    give the freed memory back to the OS (else the process keeps its peak RSS)."""
    if clear_cache:
        executor.cache.clear()
    if unload_models:
        executor.models.unload_all()
    if clear_cache or unload_models:
        gc.collect()
        return_free_memory()
