"""Which worker runs a prompt, and what to do while none can: pure policy (no Ray, no threads, no clock).

An idle worker that holds the prompt's checkpoint wins (then the one holding most of its other model
files); otherwise the least loaded idle worker (fewest prompts run, then fewest models held). A worker
that lacks a file the prompt names is never chosen. Embeddings named in prompt text count the same way
when some worker has them all; when none has, the prompt runs anyway (their names are dropped with a
warning, as on one machine). When every worker that could run it is busy, the prompt waits for one of
them, so the queue's order holds.

:func:`decide` is the whole decision for a prompt the dispatcher holds, over a snapshot of the workers:
:class:`Start` it on a worker, :class:`Wait`, :class:`Fail` it with a reason, :class:`Cancel` it (it was
interrupted while waiting) or :class:`Release` it back to the queue (the front is stopping).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.cluster.needs import PromptNeeds
from engine.cluster.state import WorkerState


@dataclass(frozen=True)
class Start:
    worker: WorkerState


@dataclass(frozen=True)
class Wait:
    """No worker for it now. ``recheck_files``: ask the workers for their model files first (files may
    have been added since they were asked), then decide again."""

    recheck_files: bool = False


@dataclass(frozen=True)
class Fail:
    reason: str
    kind: str  # loom.cluster.<kind> is the execution_error's exception_type


@dataclass(frozen=True)
class Cancel:
    """Interrupted (or deleted) while it waited for a worker."""


@dataclass(frozen=True)
class Release:
    """The front is stopping: the prompt goes back to its place in the queue for the next start."""


Decision = Start | Wait | Fail | Cancel | Release


@dataclass(frozen=True)
class Situation:
    """Where a prompt the dispatcher holds stands, beside the workers' states."""

    needs: PromptNeeds
    stopping: bool = False
    cancelled: bool = False
    behind_retry: bool = False  # a retried prompt (queued earlier) waits too: it goes first
    files_rechecked: bool = False
    start_error: str | None = None  # why no worker will come, when none is alive or starting
    note: str = ""  # what happened to it before, put in front of a failure's reason


def decide(situation: Situation, workers: Sequence[WorkerState]) -> Decision:
    """What to do with the prompt now."""
    if situation.stopping:
        return Release()
    if situation.cancelled:
        return Cancel()
    if situation.behind_retry:
        return Wait()
    decision = choose_worker(situation.needs, workers)
    if isinstance(decision, Wait) and situation.start_error:
        return Fail(f"{situation.note}no worker is running: {situation.start_error}", "NoWorker")
    if isinstance(decision, Fail):
        if not situation.files_rechecked:
            return Wait(recheck_files=True)
        return Fail(situation.note + decision.reason, decision.kind)
    return decision


def choose_worker(needs: PromptNeeds, workers: Sequence[WorkerState]) -> Start | Wait | Fail:
    """The routing alone: the best idle capable worker, a wait, or a failure naming what each one lacks."""
    alive = [w for w in workers if w.alive]
    if not alive:
        return Wait()
    capable = [w for w in alive if not w.lacks(needs)]
    if not capable:
        return Fail(missing_files_message(needs, alive), "WorkerLacksModel")
    with_embeddings = [w for w in capable if w.has_embeddings(needs)]
    if needs.embeddings and with_embeddings:  # the picture that a machine with the embeddings makes
        capable = with_embeddings
    idle = [w for w in capable if w.idle]
    if not idle:
        return Wait()
    return Start(min(idle, key=lambda w: _rank(w, needs)))


def _rank(worker: WorkerState, needs: PromptNeeds) -> tuple[int, int, int, int, str]:
    holds_checkpoint = any(("checkpoints", name) in worker.held for name in needs.checkpoints)
    held_needs = len(needs.models & worker.held)
    return (-int(holds_checkpoint), -held_needs, worker.prompts_run, len(worker.held), worker.worker_id)


def missing_files_message(needs: PromptNeeds, workers: Iterable[WorkerState]) -> str:
    lines = [f"worker {w.worker_id}{f' on {w.node}' if w.node else ''} lacks {', '.join(w.lacks(needs))}"
             for w in workers]
    return ("no worker has every model file this prompt names: " + "; ".join(lines)
            + ". Put the files in each worker's model folders (or share them) and queue it again.")
