"""Cluster faults and membership: killed workers, workers without a model, workers that join later."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import REPO, Cluster, ray, start_cluster, stop_cluster, txt2img_prompt
from tests.support.stub_nodes import sleep_prompt


@pytest.fixture
def fresh(ray_cluster: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A cluster of its own; ``@pytest.mark.parametrize("fresh", [{...}], indirect=True)`` sets options."""
    options = dict(getattr(request, "param", {}))
    models = options.pop("models", lambda _: [REPO / "models"])
    cluster = start_cluster(tmp_path, models, **options)
    yield cluster
    stop_cluster(cluster)


def _running_on(cluster: Cluster, prompt_id: str, timeout: float = 60) -> str:
    """The worker id once the prompt's first progress event arrived."""
    deadline = time.monotonic() + timeout
    while not any(e.type == "progress" for e in cluster.sinks.events[prompt_id]):
        assert time.monotonic() < deadline, f"{prompt_id} never started"
        time.sleep(0.05)
    return cluster.runner.ran_on[prompt_id]


def _kill(cluster: Cluster, worker_id: str) -> None:
    """SIGKILL the worker's process, as a crash or an out-of-memory kill would."""
    pid = ray.get(cluster.pool.actor(worker_id).pid.remote())
    os.kill(pid, signal.SIGKILL)


def _wait_for_workers(cluster: Cluster, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(cluster.pool.alive()) < count:
        assert time.monotonic() < deadline, f"{len(cluster.pool.alive())} workers, not {count}"
        time.sleep(0.1)


def test_a_killed_worker_is_replaced_and_its_prompt_retried_on_another(fresh: Cluster) -> None:
    fresh.queue_prompt(sleep_prompt(5, 3.0), "doomed")
    first = _running_on(fresh, "doomed")
    _kill(fresh, first)
    entry = fresh.wait("doomed")
    assert entry["status"]["status_str"] == "success" and entry["outputs"]["2"]["text"] == ["5"]
    assert fresh.runner.ran_on["doomed"] != first
    assert [e.type for e in fresh.sinks.events["doomed"]].count("execution_start") == 1  # the client saw one start
    _wait_for_workers(fresh, 2)  # the dead one was replaced
    assert first not in {s.worker_id for s in fresh.pool.alive()}


def test_a_prompt_whose_workers_die_twice_is_recorded_failed_and_the_queue_goes_on(fresh: Cluster) -> None:
    fresh.queue_prompt(sleep_prompt(6, 5.0), "cursed")
    fresh.queue_prompt(sleep_prompt(7, 0.1), "after")
    first = _running_on(fresh, "cursed")
    _kill(fresh, first)
    deadline = time.monotonic() + 60
    while fresh.runner.ran_on["cursed"] == first:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    fresh.sinks.events["cursed"].clear()
    second = _running_on(fresh, "cursed")
    _kill(fresh, second)
    entry = fresh.wait("cursed")
    assert entry["status"]["status_str"] == "error"
    message = entry["status"]["messages"][-1][1]["exception_message"]
    assert f"worker {second}" in message and "died" in message and "retried once" in message
    assert fresh.wait("after")["status"]["status_str"] == "success"
    assert [e.type for e in fresh.sinks.events["cursed"]][-2:] == ["execution_error", "executing"]


@pytest.mark.parametrize("fresh", [{"models": lambda wid: [REPO / "models"] if wid == "w1" else []}],
                         indirect=True)
def test_prompts_go_only_to_workers_with_their_model(fresh: Cluster) -> None:
    ids = [fresh.queue_prompt(txt2img_prompt(seed, steps=2), f"model-{seed}") for seed in (1, 2, 3)]
    assert all(fresh.wait(pid)["status"]["status_str"] == "success" for pid in ids)
    assert {fresh.runner.ran_on[pid] for pid in ids} == {"w1"}  # w2 lacks the checkpoint
    missing = txt2img_prompt(4)
    missing["4"]["inputs"]["ckpt_name"] = "absent.safetensors"
    entry = fresh.wait(fresh.queue_prompt(missing, "missing"))
    message = entry["status"]["messages"][-1][1]["exception_message"]
    assert entry["status"]["status_str"] == "error"
    assert "worker w1" in message and "worker w2" in message and "checkpoints/absent.safetensors" in message


@pytest.mark.parametrize("fresh", [{"max_workers": None}], indirect=True)
def test_a_machine_that_joins_takes_work_and_its_loss_is_survived(fresh: Cluster, ray_cluster: Any) -> None:
    """A third Ray node joins: a worker starts there and takes a prompt. The node is then removed while
    every worker runs a prompt (a machine lost): its prompt is retried on another worker and succeeds."""
    assert len(fresh.pool.alive()) == 2
    node = ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    _wait_for_workers(fresh, 3)
    [newcomer] = [s.worker_id for s in fresh.pool.alive() if s.worker_id not in ("w1", "w2")]
    ids = [fresh.queue_prompt(sleep_prompt(30 + n, 4.0), f"spread-{n}") for n in range(3)]
    for prompt_id in ids:
        _running_on(fresh, prompt_id)
    first_workers = {pid: fresh.runner.ran_on[pid] for pid in ids}
    assert set(first_workers.values()) == {"w1", "w2", newcomer}  # three prompts at once, one per machine
    [lost] = [pid for pid, wid in first_workers.items() if wid == newcomer]
    ray_cluster.remove_node(node)
    entries = {pid: fresh.wait(pid) for pid in ids}
    assert all(e["status"]["status_str"] == "success" for e in entries.values()), entries
    assert entries[lost]["outputs"]["2"]["text"] == [str(30 + ids.index(lost))]
    assert fresh.runner.ran_on[lost] in ("w1", "w2")  # retried on a machine still there
    assert newcomer not in {s.worker_id for s in fresh.pool.alive()}
    assert len(fresh.pool.alive()) == 2  # no replacement: the cluster has two CPUs again


@pytest.mark.parametrize("fresh", [{"models": lambda wid: [REPO / "models"] if wid == "w1" else []}],
                         indirect=True)
def test_stopping_the_front_gives_a_waiting_prompt_back_to_the_queue(fresh: Cluster) -> None:
    """A prompt the dispatcher took but could not start (only busy w1 has its checkpoint; w2 is idle but
    lacks it) goes back to the queue, in its place, when the front stops."""
    def needs_checkpoint(value: int, seconds: float) -> dict[str, Any]:
        prompt = sleep_prompt(value, seconds)
        prompt["9"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}}
        return prompt

    fresh.queue_prompt(needs_checkpoint(1, 30.0), "busy")
    assert _running_on(fresh, "busy") == "w1"
    fresh.queue_prompt(needs_checkpoint(2, 0.1), "waiting")
    deadline = time.monotonic() + 10
    while [item.prompt_id for item in fresh.queue.running()] != ["busy", "waiting"]:
        assert time.monotonic() < deadline, "the dispatcher did not take the second prompt"
        time.sleep(0.05)
    fresh.runner.stop()
    assert [item.prompt_id for item in fresh.queue.pending()] == ["waiting"]  # it runs at the next start
    assert fresh.wait("busy", timeout=15)["status"]["messages"][-1][0] == "execution_interrupted"


@pytest.mark.parametrize("fresh", [{"extra_nodes": ("tests.cluster.no_such_module:register",)}], indirect=True)
def test_workers_that_cannot_start_fail_prompts_with_the_reason_and_are_retried_slowly(fresh: Cluster) -> None:
    """A worker that cannot start (here a node module its machine lacks; often Loom at another path there)
    makes prompts fail with the reason instead of waiting for ever, and starts are retried with a pause."""
    assert fresh.pool.alive() == [] and fresh.pool.start_error is not None
    entry = fresh.wait(fresh.queue_prompt(sleep_prompt(1, 0.1), "nobody"), timeout=30)
    message = entry["status"]["messages"][-1][1]["exception_message"]
    assert entry["status"]["status_str"] == "error"
    assert message.startswith("no worker is running: worker w") and "did not start" in message
    assert "No module named 'tests.cluster.no_such_module'" in message
    reason = fresh.pool.start_error
    time.sleep(3.0)  # three checks at 1 s: no new start within the pause (5 s, doubled by the second failure)
    assert fresh.pool.starting() == 0 and fresh.pool.start_error == reason
