"""Scale-out on a local Ray cluster of two CPU workers: parallel prompts, events, images, affinity, faults."""

from __future__ import annotations

import time
from typing import Any

from tests.cluster.conftest import Cluster, txt2img_prompt
from tests.support.stub_nodes import sleep_prompt


def test_two_prompts_run_in_parallel_on_two_workers(cluster: Cluster) -> None:
    one = time.monotonic()
    cluster.queue_prompt(sleep_prompt(1, 2.0), "solo")
    cluster.wait("solo")
    alone = time.monotonic() - one
    start = time.monotonic()
    for value in (2, 3):
        cluster.queue_prompt(sleep_prompt(value, 2.0), f"pair-{value}")
    entries = [cluster.wait(f"pair-{value}") for value in (2, 3)]
    together = time.monotonic() - start
    assert [e["status"]["status_str"] for e in entries] == ["success", "success"]
    assert [e["outputs"]["2"]["text"] for e in entries] == [["2"], ["3"]]
    assert {cluster.runner.ran_on["pair-2"], cluster.runner.ran_on["pair-3"]} == {"w1", "w2"}
    assert together < 1.5 * alone, (together, alone)


def _sequence(events: list[Any]) -> list[tuple[str, Any]]:
    """What a client sees: each message's type and node (timestamps and ids aside)."""
    return [(e.type, getattr(e, "node", None) or getattr(e, "nodes", None)) for e in events]


def test_event_sequence_is_the_one_machine_sequence(cluster: Cluster, tmp_path: Any) -> None:
    from engine.cache import OutputCache
    from engine.executor import Executor
    from engine.worker import PromptWorker
    from tests.support.events import RecordingSinks
    from tests.support.stub_nodes import registry_with_stubs

    prompt = sleep_prompt(11, 0.3)
    cluster.queue_prompt(prompt, "events-cluster", client_id="c1")
    cluster.wait("events-cluster")
    # The final executing(None) follows the history write.
    cluster.sinks.wait_for("c1", lambda e: (e.type, getattr(e, "node", 0)) == ("executing", None),
                           timeout=10)
    on_cluster = _sequence(cluster.sinks.events["c1"])

    from engine.queue import PromptQueue

    local_sinks = RecordingSinks()
    with PromptQueue(tmp_path / "q.sqlite3") as queue:
        executor = Executor(registry_with_stubs(), cluster.folders, OutputCache(10**8, 100))
        worker = PromptWorker(queue, executor, local_sinks.sink_for)
        queue.put("events-local", prompt, {"client_id": "c1"}, ["2"])
        worker.run_once(timeout=5)
    on_one_machine = _sequence(local_sinks.events["c1"])
    assert on_cluster == on_one_machine
    assert on_cluster[0][0] == "execution_start" and on_cluster[-1] == ("executing", None)
    assert ("progress", "1") in on_cluster and ("executed", "2") in on_cluster


def test_txt2img_images_come_back_to_the_front_under_free_names(cluster: Cluster) -> None:
    from PIL import Image

    for seed in (1, 2):
        cluster.queue_prompt(txt2img_prompt(seed, prefix="twins"), f"twins-{seed}")
    entries = [cluster.wait(f"twins-{seed}") for seed in (1, 2)]
    assert [e["status"]["status_str"] for e in entries] == ["success", "success"], entries
    assert {cluster.runner.ran_on["twins-1"], cluster.runner.ran_on["twins-2"]} == {"w1", "w2"}
    names = [e["outputs"]["9"]["images"][0]["filename"] for e in entries]
    assert sorted(names) == ["twins_00001_.png", "twins_00002_.png"]  # both workers wrote 00001
    pictures = [Image.open(cluster.folders.output_dir / name) for name in names]
    assert [p.size for p in pictures] == [(64, 64), (64, 64)]
    assert pictures[0].tobytes() != pictures[1].tobytes()
    assert "prompt" in pictures[0].info  # the PNG metadata made on the worker arrives intact
    executed = [e for e in cluster.sinks.events["twins-1"] if e.type == "executed"]
    assert executed[0].output["images"][0]["filename"] == names[0]  # the event names the front's file


def test_affinity_keeps_a_checkpoint_on_the_worker_that_loaded_it(cluster: Cluster) -> None:
    cluster.runner.request_free(unload_models=True, free_memory=True)  # POST /free: no worker holds a model
    assert all(not s.held for s in cluster.pool.all())
    for seed in (10, 11, 12):
        cluster.queue_prompt(txt2img_prompt(seed, steps=2, prefix="affinity"), f"affinity-{seed}")
        assert cluster.wait(f"affinity-{seed}")["status"]["status_str"] == "success"
    workers = {cluster.runner.ran_on[f"affinity-{seed}"] for seed in (10, 11, 12)}
    assert len(workers) == 1, workers  # least-loaded alone would alternate between the two
    [holder] = workers
    state = next(s for s in cluster.pool.all() if s.worker_id == holder)
    assert ("checkpoints", "tiny-shapes.safetensors") in state.held


def test_interrupt_reaches_the_worker_that_runs_the_prompt(cluster: Cluster) -> None:
    cluster.queue_prompt(sleep_prompt(21, 30.0), "long")
    cluster.sinks.wait_for("long", lambda e: e.type == "progress", timeout=30)
    start = time.monotonic()
    assert cluster.runner.interrupt("long")
    entry = cluster.wait("long", timeout=10)
    assert time.monotonic() - start < 5
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_interrupted"


def test_the_same_prompt_again_names_the_same_front_file(cluster: Cluster) -> None:
    """Workers keep shipped images as empty files; a re-run (cached on its worker, or recomputed on the
    other with the same bytes) still names the one file the front saved."""
    names = []
    for attempt in (1, 2):
        entry = cluster.wait(cluster.queue_prompt(txt2img_prompt(77, steps=2, prefix="again"), f"again-{attempt}"))
        assert entry["status"]["status_str"] == "success"
        names.append(entry["outputs"]["9"]["images"][0]["filename"])
    assert names == ["again_00001_.png", "again_00001_.png"]
    saved = sorted(cluster.folders.output_dir.glob("again_*"))
    assert [p.name for p in saved] == ["again_00001_.png"] and saved[0].stat().st_size > 100
