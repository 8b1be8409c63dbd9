"""Which worker runs a prompt: pure policy over the workers' states (no Ray, no threads).

An idle worker that holds the prompt's checkpoint wins (then the one holding most of its other model
files); otherwise the least loaded idle worker (fewest prompts run, then fewest models held). A worker
that lacks a file the prompt names is never chosen. Embeddings named in prompt text count the same way
when some worker has them all; when none has, the prompt runs anyway (their names are dropped with a
warning, as on one machine). When every worker that could run it is busy, the prompt waits for one of
them, so the queue's order holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.cluster.needs import PromptNeeds, has_embedding


@dataclass
class WorkerState:
    """What the front knows of one worker."""

    worker_id: str
    models: dict[str, frozenset[str]] = field(default_factory=dict)  # folder -> file names it has
    held: frozenset[tuple[str, str]] = frozenset()  # (folder, name) loaded in its memory
    busy_with: str | None = None  # prompt id
    alive: bool = True
    prompts_run: int = 0
    node: str = ""  # host or Ray node id, for messages

    def has_embeddings(self, needs: PromptNeeds) -> bool:
        files = self.models.get("embeddings", frozenset())
        return all(has_embedding(files, name) for name in needs.embeddings)

    def lacks(self, needs: PromptNeeds) -> list[str]:
        """The model files of ``needs`` this worker does not have, as folder/name."""
        return sorted(f"{folder}/{name}" for folder, name in needs.models
                      if name not in self.models.get(folder, frozenset()))


@dataclass(frozen=True)
class Decision:
    """A worker to run on, or ``wait`` (a capable worker is busy), or ``error`` (none can run it)."""

    worker: WorkerState | None = None
    wait: bool = False
    error: str = ""


def choose_worker(needs: PromptNeeds, workers: Sequence[WorkerState]) -> Decision:
    alive = [w for w in workers if w.alive]
    if not alive:
        return Decision(wait=True)
    capable = [w for w in alive if not w.lacks(needs)]
    if not capable:
        return Decision(error=missing_files_message(needs, alive))
    with_embeddings = [w for w in capable if w.has_embeddings(needs)]
    if needs.embeddings and with_embeddings:  # the picture that a machine with the embeddings makes
        capable = with_embeddings
    idle = [w for w in capable if w.busy_with is None]
    if not idle:
        return Decision(wait=True)
    return Decision(worker=min(idle, key=lambda w: _rank(w, needs)))


def _rank(worker: WorkerState, needs: PromptNeeds) -> tuple[int, int, int, int, str]:
    holds_checkpoint = any(("checkpoints", name) in worker.held for name in needs.checkpoints)
    held_needs = len(needs.models & worker.held)
    return (-int(holds_checkpoint), -held_needs, worker.prompts_run, len(worker.held), worker.worker_id)


def missing_files_message(needs: PromptNeeds, workers: Iterable[WorkerState]) -> str:
    lines = [f"worker {w.worker_id}{f' on {w.node}' if w.node else ''} lacks {', '.join(w.lacks(needs))}"
             for w in workers]
    return ("no worker has every model file this prompt names: " + "; ".join(lines)
            + ". Put the files in each worker's model folders (or share them) and queue it again.")
