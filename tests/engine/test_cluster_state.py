"""The cluster workers' states and their transitions (engine/cluster/state.py), without Ray."""

from __future__ import annotations

import threading

from engine.cluster.state import FREEING, IDLE, Dead, Running, WorkerState, WorkerTable

CKPT = ("checkpoints", "a.safetensors")


def table_of(*worker_ids: str) -> WorkerTable:
    table = WorkerTable()
    for worker_id in worker_ids:
        table.add(WorkerState(worker_id, node=f"host-{worker_id}"))
    return table


def activity(table: WorkerTable, worker_id: str) -> object:
    state = table.get(worker_id)
    assert state is not None
    return state.activity


def test_a_run_claims_an_idle_worker_once_and_ends_idle_with_what_it_holds() -> None:
    table = table_of("w1")
    assert table.claim("w1", "p1")
    assert not table.claim("w1", "p2")  # running: no second prompt
    assert table.get("w1").running == "p1" and activity(table, "w1") == Running("p1")
    assert table.end_run("w1", frozenset({CKPT})) is False  # nothing to free
    state = table.get("w1")
    assert state.idle and state.prompts_run == 1 and state.held == {CKPT}
    table.claim("w1", "p2")
    table.end_run("w1", None)  # unknown: what it held stays
    assert table.get("w1").held == {CKPT} and table.get("w1").prompts_run == 2


def test_free_makes_idle_workers_freeing_at_once_and_running_ones_after_their_prompt() -> None:
    table = table_of("w1", "w2")
    table.claim("w2", "p")
    table.end_run("w2", frozenset({CKPT}))
    table.claim("w2", "p2")
    assert table.request_free((True, False)) == ["w1"]  # only the idle one frees now
    assert activity(table, "w1") == FREEING and not table.claim("w1", "p3")  # no prompt while it frees
    assert all(not s.held for s in table.all())  # an unload leaves no affinity
    assert table.take_free("w1") == (True, False)
    assert table.take_free("w1") is None and activity(table, "w1") == IDLE
    assert table.end_run("w2", frozenset({CKPT})) is True  # its prompt is done: free it now
    assert activity(table, "w2") == FREEING
    assert table.take_free("w2") == (True, False) and table.get("w2").held == frozenset()
    assert table.take_free("w2") is None and table.get("w2").idle


def test_a_dead_worker_stays_dead_and_drops_its_pending_free() -> None:
    table = table_of("w1")
    table.claim("w1", "p")
    table.request_free((False, True))
    assert table.mark_dead("w1", "ActorDiedError")
    assert not table.mark_dead("w1", "again")
    state = table.get("w1")
    assert not state.alive and state.activity == Dead("ActorDiedError") and state.running is None
    assert not table.claim("w1", "p2") and table.end_run("w1", None) is False and table.take_free("w1") is None
    assert table.alive() == [] and table.request_free((True, True)) == []


def test_describe_shows_the_state_as_system_stats_lists_it() -> None:
    table = table_of("w1")
    table.claim("w1", "p1")
    assert table.get("w1").describe() == {"worker_id": "w1", "node": "host-w1", "alive": True, "running": "p1",
                                          "state": "running", "prompts_run": 0, "holds": []}


def test_every_change_wakes_a_waiter() -> None:
    table = table_of("w1")
    woke = threading.Event()

    def waiter() -> None:
        with table.changed:
            if table.changed.wait_for(lambda: table.get("w1").running == "p", timeout=5):
                woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    table.claim("w1", "p")
    thread.join(5)
    assert woke.is_set()
