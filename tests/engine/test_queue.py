"""PromptQueue against real sqlite files: order, blocking, history, limits, secrets, persistence."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import QueueFull
from engine.queue import CRASH_MESSAGE, PromptQueue, QueueClosed, QueueItem

PROMPT: dict[str, Any] = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}
SUCCESS: dict[str, Any] = {"status_str": "success", "completed": True, "messages": []}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "queue.sqlite3"


@pytest.fixture
def queue(db_path: Path) -> Iterator[PromptQueue]:
    q = PromptQueue(db_path)
    yield q
    q.close()


def put(q: PromptQueue, prompt_id: str, **kwargs: Any) -> float:
    return q.put(prompt_id, PROMPT, {"client_id": "c1"}, ["9"], **kwargs)


def run_one(q: PromptQueue, outputs: dict[str, Any] | None = None) -> str:
    item = q.get(timeout=1)
    assert item is not None
    q.finish(item.prompt_id, outputs=outputs or {}, status=SUCCESS)
    return item.prompt_id


def ids(items: list[QueueItem]) -> list[str]:
    return [item.prompt_id for item in items]


# ---------------------------------------------------------------- order


def test_counter_numbers_run_in_queue_order(queue: PromptQueue) -> None:
    assert [put(queue, p) for p in ("a", "b", "c")] == [1.0, 2.0, 3.0]
    assert ids(queue.pending()) == ["a", "b", "c"]
    assert [run_one(queue) for _ in range(3)] == ["a", "b", "c"]


def test_lowest_number_runs_first(queue: PromptQueue) -> None:
    put(queue, "late", number=50)
    put(queue, "early", number=-3.5)
    put(queue, "mid", number=7)
    assert ids(queue.pending()) == ["early", "mid", "late"]
    assert [item.number for item in queue.pending()] == [-3.5, 7.0, 50.0]


def test_front_goes_before_everything_queued(queue: PromptQueue) -> None:
    put(queue, "a")
    put(queue, "b")
    assert put(queue, "urgent", front=True) == -3.0
    assert ids(queue.pending()) == ["urgent", "a", "b"]
    got = queue.get(timeout=1)
    assert got is not None and got.prompt_id == "urgent"


def test_equal_numbers_are_first_in_first_out(queue: PromptQueue) -> None:
    for prompt_id in ("x", "y", "z"):
        put(queue, prompt_id, number=5)
    assert [run_one(queue) for _ in range(3)] == ["x", "y", "z"]


def test_a_released_prompt_goes_back_to_its_place(queue: PromptQueue) -> None:
    for prompt_id in ("a", "b"):
        put(queue, prompt_id)
    taken = queue.get(timeout=1)
    assert taken is not None and taken.prompt_id == "a" and ids(queue.running()) == ["a"]
    assert queue.release("a")
    assert not queue.release("a")  # no longer running
    assert ids(queue.running()) == [] and ids(queue.pending()) == ["a", "b"]
    again = queue.get(timeout=1)
    assert again is not None and (again.prompt_id, again.number) == ("a", 1.0)


def test_get_returns_the_stored_item(queue: PromptQueue) -> None:
    extra = {"client_id": "c9", "extra_pnginfo": {"workflow": {"nodes": [1]}}}
    queue.put("p", PROMPT, extra, ["9", "12"])
    item = queue.get(timeout=1)
    assert item == QueueItem(1.0, "p", PROMPT, extra, ["9", "12"])
    assert ids(queue.running()) == ["p"]
    assert queue.pending() == []


def test_non_finite_number_refused(queue: PromptQueue) -> None:
    with pytest.raises(ValueError, match="finite"):
        put(queue, "n", number=float("nan"))
    assert queue.remaining() == 0


# ---------------------------------------------------------------- blocking


def test_get_blocks_until_put_from_another_thread(queue: PromptQueue) -> None:
    got: list[QueueItem | None] = []
    taker = threading.Thread(target=lambda: got.append(queue.get(timeout=10)))
    taker.start()
    time.sleep(0.2)
    assert got == [] and taker.is_alive()
    put(queue, "wake")
    taker.join(timeout=5)
    assert not taker.is_alive()
    assert got[0] is not None and got[0].prompt_id == "wake"
    assert ids(queue.running()) == ["wake"]


def test_get_timeout_returns_none(queue: PromptQueue) -> None:
    start = time.monotonic()
    assert queue.get(timeout=0.2) is None
    assert 0.15 <= time.monotonic() - start < 2


def test_close_wakes_a_waiting_get(db_path: Path) -> None:
    q = PromptQueue(db_path)
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(q.get()))
    taker.start()
    time.sleep(0.1)
    q.close()
    taker.join(timeout=5)
    assert not taker.is_alive()
    assert got == [None]
    with pytest.raises(QueueClosed):
        put(q, "late")


def test_many_threads_take_each_item_once(queue: PromptQueue) -> None:
    taken: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (item := queue.get(timeout=0.5)) is not None:
            with lock:
                taken.append(item.prompt_id)
            queue.finish(item.prompt_id, outputs={}, status=SUCCESS)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for n in range(100):
        put(queue, f"p{n}")
    for thread in workers:
        thread.join(timeout=10)
    assert sorted(taken) == sorted(f"p{n}" for n in range(100))
    assert len(queue.history()) == 100
    assert queue.remaining() == 0


# ---------------------------------------------------------------- finish, history


def test_finish_writes_history_in_comfyui_shape(queue: PromptQueue) -> None:
    put(queue, "p")
    item = queue.get(timeout=1)
    assert item is not None
    outputs = {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
    meta = {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}}
    queue.finish("p", outputs=outputs, status=SUCCESS, meta=meta)
    entry = queue.history_entry("p")
    assert entry == {
        "prompt": [1.0, "p", PROMPT, {"client_id": "c1"}, ["9"]],
        "outputs": outputs,
        "status": SUCCESS,
        "meta": meta,
    }
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    assert queue.running() == []
    assert queue.remaining() == 0
    assert queue.history() == {"p": entry}


def test_finish_without_meta_stores_empty_meta(queue: PromptQueue) -> None:
    put(queue, "p")
    run_one(queue)
    entry = queue.history_entry("p")
    assert entry is not None and entry["meta"] == {}


def test_finish_refuses_a_prompt_that_is_not_running(queue: PromptQueue) -> None:
    put(queue, "p")
    with pytest.raises(ValueError, match="not running"):
        queue.finish("p", outputs={}, status=SUCCESS)
    assert ids(queue.pending()) == ["p"]
    assert queue.history() == {}


def test_history_entry_unknown_is_none(queue: PromptQueue) -> None:
    assert queue.history_entry("nope") is None


def test_remaining_counts_pending_and_running(queue: PromptQueue) -> None:
    assert queue.remaining() == 0
    for prompt_id in ("a", "b", "c"):
        put(queue, prompt_id)
    assert queue.remaining() == 3
    item = queue.get(timeout=1)
    assert item is not None
    assert queue.remaining() == 3
    queue.finish(item.prompt_id, outputs={}, status=SUCCESS)
    assert queue.remaining() == 2


def test_delete_and_clear_touch_only_pending(queue: PromptQueue) -> None:
    for prompt_id in ("run", "a", "b", "c"):
        put(queue, prompt_id)
    assert queue.get(timeout=1) is not None  # "run" is now running
    assert queue.delete(["a", "run", "missing"]) == 1
    assert ids(queue.pending()) == ["b", "c"]
    assert ids(queue.running()) == ["run"]
    assert queue.clear() == 2
    assert queue.pending() == []
    assert ids(queue.running()) == ["run"]
    assert queue.remaining() == 1
    assert queue.delete([]) == 0
    assert queue.clear() == 0


def fill_history(q: PromptQueue, count: int) -> list[str]:
    for n in range(count):
        put(q, f"h{n}")
    return [run_one(q) for _ in range(count)]


def test_history_offset_and_max_items(queue: PromptQueue) -> None:
    fill_history(queue, 5)
    assert list(queue.history()) == ["h0", "h1", "h2", "h3", "h4"]
    assert list(queue.history(max_items=2)) == ["h0", "h1"]
    assert list(queue.history(offset=3)) == ["h3", "h4"]
    assert list(queue.history(max_items=2, offset=1)) == ["h1", "h2"]
    assert list(queue.history(max_items=3, offset=4)) == ["h4"]
    assert list(queue.history(max_items=2, offset=-1)) == ["h3", "h4"]
    assert list(queue.history(max_items=9, offset=-1)) == ["h0", "h1", "h2", "h3", "h4"]
    assert list(queue.history(offset=-1)) == ["h0", "h1", "h2", "h3", "h4"]
    assert queue.history(max_items=0) == {}


def test_history_trimmed_to_max_history_oldest_first(db_path: Path) -> None:
    with PromptQueue(db_path, max_history=3) as q:
        fill_history(q, 5)
        assert list(q.history()) == ["h2", "h3", "h4"]
        assert q.history_entry("h0") is None


def test_history_cap_holds_after_deletes_and_restart(db_path: Path) -> None:
    def finish_one(q: PromptQueue, prompt_id: str) -> None:
        put(q, prompt_id)
        assert run_one(q) == prompt_id

    with PromptQueue(db_path, max_history=3) as q:
        for prompt_id in ("a", "b", "c"):
            finish_one(q, prompt_id)
        assert q.delete_history(["b"]) == 1
        finish_one(q, "d")
        assert list(q.history()) == ["a", "c", "d"]
    with PromptQueue(db_path, max_history=3) as q:
        finish_one(q, "e")
        assert list(q.history()) == ["c", "d", "e"]
        assert q.clear_history() == 3
        finish_one(q, "f")
        assert list(q.history()) == ["f"]
    with PromptQueue(db_path, max_history=1) as q:  # a smaller cap applies at the next finish
        finish_one(q, "g")
        assert list(q.history()) == ["g"]


def test_delete_and_clear_history(queue: PromptQueue) -> None:
    fill_history(queue, 3)
    assert queue.delete_history(["h1", "nope"]) == 1
    assert list(queue.history()) == ["h0", "h2"]
    assert queue.clear_history() == 2
    assert queue.history() == {}


# ---------------------------------------------------------------- limits


def test_queue_full_at_max_pending(db_path: Path) -> None:
    with PromptQueue(db_path, max_pending=2) as q:
        put(q, "a")
        put(q, "b")
        with pytest.raises(QueueFull) as caught:
            put(q, "c")
        assert str(caught.value) == (
            "the queue holds 2 pending prompts, its maximum; wait for some to finish or delete "
            'pending ones with POST /queue {"delete": [...]}'
        )
        assert ids(q.pending()) == ["a", "b"]
        assert q.get(timeout=1) is not None  # a running prompt frees a pending slot
        assert put(q, "c") == 3.0


def test_duplicate_prompt_id_refused_pending_running_and_history(queue: PromptQueue) -> None:
    put(queue, "done")
    run_one(queue)
    put(queue, "run")
    assert queue.get(timeout=1) is not None
    put(queue, "wait")
    for prompt_id, where in (("wait", "pending"), ("run", "running"), ("done", "in history")):
        with pytest.raises(ValueError, match=f"'{prompt_id}' is already used by a prompt that is {where}"):
            put(queue, prompt_id)
    assert ids(queue.pending()) == ["wait"]
    assert queue.remaining() == 2


# ---------------------------------------------------------------- secrets


SECRET_EXTRA: dict[str, Any] = {
    "client_id": "c1",
    "auth_token_comfy_org": "t1",
    "api_key_comfy_org": "k1",
    "my_Token": "t2",
    "openai_api_key": "k2",
    "extra_pnginfo": {"workflow": {"widgets": {"max_tokens": 5}}},
}
SCRUBBED_EXTRA: dict[str, Any] = {
    "client_id": "c1",
    "extra_pnginfo": {"workflow": {"widgets": {"max_tokens": 5}}},
}


def test_as_list_drops_sensitive_keys_only_at_top_level() -> None:
    item = QueueItem(2.0, "p", PROMPT, SECRET_EXTRA, ["9"])
    assert item.as_list() == [2.0, "p", PROMPT, SCRUBBED_EXTRA, ["9"]]
    assert item.extra_data == SECRET_EXTRA


def test_executor_sees_secrets_history_does_not(queue: PromptQueue) -> None:
    queue.put("p", PROMPT, SECRET_EXTRA, ["9"])
    item = queue.get(timeout=1)
    assert item is not None and item.extra_data == SECRET_EXTRA
    queue.finish("p", outputs={}, status=SUCCESS)
    entry = queue.history_entry("p")
    assert entry is not None and entry["prompt"][3] == SCRUBBED_EXTRA
    assert queue.history()["p"]["prompt"][3] == SCRUBBED_EXTRA


# ---------------------------------------------------------------- listeners


def test_listeners_called_after_each_queue_change(queue: PromptQueue) -> None:
    seen: list[int] = []
    queue.add_listener(lambda: seen.append(queue.remaining()))
    put(queue, "a")
    put(queue, "b")
    put(queue, "c")
    run_one(queue)  # get, then finish
    queue.delete(["b"])
    queue.delete(["missing"])  # no change, no call
    queue.clear()
    assert seen == [1, 2, 3, 3, 2, 1, 0]


def test_raising_listener_does_not_break_put(queue: PromptQueue, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("listener bug")

    queue.add_listener(broken)
    queue.add_listener(lambda: calls.append("ok"))
    assert put(queue, "a") == 1.0
    assert ids(queue.pending()) == ["a"]
    assert calls == ["ok"]
    assert "listener bug" in caplog.text


# ---------------------------------------------------------------- persistence


def test_restart_keeps_pending_and_fails_the_running_prompt(db_path: Path) -> None:
    q = PromptQueue(db_path)
    for prompt_id in ("first", "second", "third"):
        put(q, prompt_id)
    put(q, "urgent", front=True)
    running = q.get(timeout=1)
    assert running is not None and running.prompt_id == "urgent"
    q.close()

    with PromptQueue(db_path) as reopened:
        assert ids(reopened.pending()) == ["first", "second", "third"]
        assert [item.number for item in reopened.pending()] == [1.0, 2.0, 3.0]
        assert reopened.running() == []
        assert reopened.remaining() == 3
        entry = reopened.history_entry("urgent")
        assert entry is not None
        assert entry["prompt"] == [-4.0, "urgent", PROMPT, {"client_id": "c1"}, ["9"]]
        assert entry["outputs"] == {} and entry["meta"] == {}
        status = entry["status"]
        assert status["status_str"] == "error" and status["completed"] is False
        [[event, data]] = status["messages"]
        assert event == "execution_error"
        assert data["prompt_id"] == "urgent"
        assert data["exception_message"] == CRASH_MESSAGE
        assert data["exception_type"] == "loom.Crashed"
        assert data["node_id"] is None and data["traceback"] == []
        assert isinstance(data["timestamp"], int) and data["timestamp"] > 1_600_000_000_000
        assert reopened.get(timeout=1) == QueueItem(1.0, "first", PROMPT, {"client_id": "c1"}, ["9"])

    with PromptQueue(db_path) as third_open:  # "first" was running again: failed too, never retried
        assert ids(third_open.pending()) == ["second", "third"]
        assert list(third_open.history()) == ["urgent", "first"]


def test_counter_keeps_growing_across_restarts(db_path: Path) -> None:
    with PromptQueue(db_path) as q:
        assert [put(q, "a"), put(q, "b")] == [1.0, 2.0]
        q.delete(["a", "b"])
    with PromptQueue(db_path) as q:
        assert put(q, "c") == 3.0
        assert put(q, "d", front=True) == -4.0
        assert put(q, "e", number=0.5) == 0.5
    with PromptQueue(db_path) as q:
        assert put(q, "f") == 5.0
        assert ids(q.pending()) == ["d", "e", "c", "f"]


def test_history_survives_restart(db_path: Path) -> None:
    with PromptQueue(db_path) as q:
        fill_history(q, 2)
    with PromptQueue(db_path) as q:
        assert list(q.history()) == ["h0", "h1"]
        with pytest.raises(ValueError, match="in history"):
            put(q, "h0")


def test_database_uses_wal(db_path: Path) -> None:
    with PromptQueue(db_path) as q:
        put(q, "a")
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("SELECT prompt_id, state FROM items").fetchall() == [("a", "pending")]


def test_bad_limits_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        PromptQueue(db_path, max_pending=0)
    assert not db_path.exists()


# --------------------------------------------------------------------------- issue 15: limits and integer numbers

SQLITE_OVERFLOW = 10**20  # past SQLite's signed 64-bit integers


def test_history_offset_and_max_items_past_sqlite_integers_are_clamped(queue: PromptQueue) -> None:
    fill_history(queue, 3)
    assert list(queue.history(max_items=SQLITE_OVERFLOW)) == ["h0", "h1", "h2"]
    assert queue.history(offset=SQLITE_OVERFLOW) == {}
    assert list(queue.history(max_items=SQLITE_OVERFLOW, offset=-SQLITE_OVERFLOW)) == ["h0", "h1", "h2"]
    assert queue.history(max_items=-SQLITE_OVERFLOW) == {}
    page = queue.history_page(SQLITE_OVERFLOW, -SQLITE_OVERFLOW)
    assert list(json.loads(page.body)) == ["h0", "h1", "h2"] and page.entries == 3 and not page.truncated


def test_numbers_are_reported_as_integers_when_whole(queue: PromptQueue) -> None:
    put(queue, "whole", number=6.0)
    put(queue, "fraction", number=2.5)
    put(queue, "auto")
    reported = {item.prompt_id: item.as_list()[0] for item in queue.pending()}
    assert reported == {"fraction": 2.5, "whole": 6, "auto": 1}
    assert all(type(reported[key]) is int for key in ("whole", "auto"))
    while queue.remaining():
        run_one(queue)
    assert type(queue.history()["whole"]["prompt"][0]) is int
    assert type(json.loads(queue.history_page().body)["auto"]["prompt"][0]) is int


def test_history_written_with_float_numbers_reads_back_as_integers(db_path: Path) -> None:
    with PromptQueue(db_path) as q:
        fill_history(q, 2)
    db = sqlite3.connect(db_path)
    db.execute("""UPDATE history SET entry = replace(entry, '{"prompt":[1,', '{"prompt":[1.0,')""")
    db.commit()
    assert db.execute("SELECT entry FROM history WHERE prompt_id = 'h0'").fetchone()[0].startswith(
        '{"prompt":[1.0,')
    db.close()
    with PromptQueue(db_path) as q:
        for entry in (q.history()["h0"], q.history_entry("h0"), json.loads(q.history_page().body)["h0"]):
            assert entry is not None and type(entry["prompt"][0]) is int and entry["prompt"][0] == 1


def test_history_page_stays_within_its_byte_budget(queue: PromptQueue) -> None:
    for n in range(10):
        queue.put(f"b{n}", PROMPT, {"blob": "x" * 1000}, ["9"])
        run_one(queue)
    whole = queue.history_page()
    assert list(json.loads(whole.body)) == [f"b{n}" for n in range(10)] and not whole.truncated
    assert json.loads(whole.body) == queue.history()
    newest = queue.history_page(offset=-1, max_bytes=len(whole.body) // 2)
    kept = list(json.loads(newest.body))
    assert newest.truncated and len(newest.body) <= len(whole.body) // 2
    assert kept == [f"b{n}" for n in range(10 - len(kept), 10)] and newest.entries == len(kept) > 0
    oldest = queue.history_page(offset=0, max_bytes=len(whole.body) // 2)
    assert oldest.truncated and list(json.loads(oldest.body)) == [f"b{n}" for n in range(oldest.entries)]
    assert queue.history_page(offset=0, max_bytes=10).body == b"{}"
