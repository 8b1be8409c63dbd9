"""History and request size limits (issue 15): integers that overflow SQLite, integer priority numbers,
a bounded GET /history, extra_data and request bodies refused with 413, and the limits in /openapi.json."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate as validate_spec

from engine.api.operation import max_body_bytes
from engine.api.routes.prompt import TRUNCATED_HEADER
from engine.queue import PromptQueue
from engine.settings import Settings
from tests.api.conftest import TIMEOUT, LiveServer, chain_prompt, start_live_server
from tests.api.contract import Contract
from tests.api.test_routes import assert_error_schema

HUGE = "99999999999999999999"  # past SQLite's 64-bit integers


@pytest.fixture
def gate(server: LiveServer) -> Iterator[Callable[[], str]]:
    """Queue a prompt that blocks the worker in StubGate until the test ends."""
    server.controls.gate.clear()
    server.controls.entered.clear()

    def hold() -> str:
        prompt_id = server.queue_prompt(chain_prompt(1, middle="StubGate", tag=uuid.uuid4().hex))
        assert server.controls.entered.wait(TIMEOUT), "the gate node never started"
        return prompt_id

    yield hold
    server.controls.gate.set()
    server.wait_idle()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- F4: offset/max_items overflow


@pytest.mark.parametrize("query", [
    f"offset={HUGE}", f"max_items={HUGE}", f"offset=-{HUGE}&max_items={HUGE}", f"max_items=-{HUGE}",
    f"offset={HUGE}&max_items=1", f"offset=-{HUGE}", f"max_items={HUGE}&offset=0",
])
def test_history_numbers_past_sqlite_integers_are_not_500(server: LiveServer, query: str) -> None:
    server.wait_history(server.queue_prompt(chain_prompt(4)))
    for prefix in ("", "/api"):
        reply = server.get(f"{prefix}/history?{query}")
        assert reply.status == 200, reply.body[:300]
        assert isinstance(reply.json(), dict)


def test_history_huge_numbers_mean_all_or_nothing(server: LiveServer) -> None:
    prompt_id = server.queue_prompt(chain_prompt(5))
    server.wait_history(prompt_id)
    assert prompt_id in server.get(f"/history?max_items={HUGE}").json()
    assert prompt_id in server.get(f"/history?offset=0&max_items={HUGE}").json()
    assert server.get(f"/history?offset={HUGE}").json() == {}


# --------------------------------------------------------------------------- C1: integer numbers


def test_priority_numbers_are_integers_in_replies_queue_and_history(server: LiveServer,
                                                                     gate: Callable[[], str]) -> None:
    running_id = gate()
    auto = server.post("/prompt", {"prompt": chain_prompt(21)}).json()
    explicit = server.post("/prompt", {"prompt": chain_prompt(22), "number": 6.0}).json()
    front = server.post("/prompt", {"prompt": chain_prompt(23), "front": True}).json()
    fraction = server.post("/prompt", {"prompt": chain_prompt(24), "number": 2.5}).json()
    assert is_int(auto["number"]) and is_int(front["number"]) and front["number"] < 0
    assert is_int(explicit["number"]) and explicit["number"] == 6
    assert fraction["number"] == 2.5
    queue = server.get("/queue").json()
    numbers = {item[1]: item[0] for item in queue["queue_running"] + queue["queue_pending"]}
    assert is_int(numbers[running_id])
    assert all(is_int(numbers[body["prompt_id"]]) for body in (auto, explicit, front))
    assert numbers[fraction["prompt_id"]] == 2.5
    server.controls.gate.set()
    for body in (auto, front, fraction):  # lowest number first: auto, with the highest, runs last
        server.wait_history(body["prompt_id"])
    entry = server.wait_history(explicit["prompt_id"])
    assert is_int(entry["prompt"][0]) and entry["prompt"][0] == 6
    history = server.get("/history").json()
    assert is_int(history[running_id]["prompt"][0]) and is_int(history[auto["prompt_id"]]["prompt"][0])


# --------------------------------------------------------------------------- item 3 / F7: extra_data refused


def test_extra_data_over_the_limit_is_413_and_not_stored(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(max_extra_data_bytes=1000)
    reply = live.post("/prompt", {"prompt": chain_prompt(1), "extra_data": {"blob": "x" * 2000}})
    assert reply.status == 413, reply.body[:300]
    assert_error_schema(reply.json(), "extra_data_too_large")
    assert live.queue.remaining() == 0 and live.queue.history() == {}
    accepted = live.queue_prompt(chain_prompt(1), extra_data={"blob": "x" * 500})
    assert live.wait_history(accepted)["prompt"][3]["blob"] == "x" * 500


def test_a_10_mb_extra_data_is_refused_by_default(server: LiveServer) -> None:
    assert Settings.model_validate({}).max_extra_data_bytes == 2 * 1024**2
    reply = server.post("/prompt", {"prompt": chain_prompt(1), "extra_data": {"blob": "x" * 10_000_000}})
    assert reply.status == 413
    assert_error_schema(reply.json(), "extra_data_too_large")


# --------------------------------------------------------------------------- F7: bounded GET /history


def test_history_reply_stays_within_its_byte_budget(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(max_history_reply_bytes=20_000)
    ids = [live.queue_prompt(chain_prompt(n), extra_data={"blob": "x" * 2000}) for n in range(20)]
    live.wait_history(ids[-1])
    newest = live.get("/history")
    assert newest.status == 200 and len(newest.body) <= 20_000
    assert newest.headers[TRUNCATED_HEADER] == "true"
    kept = list(newest.json())
    assert 0 < len(kept) < 20 and kept == ids[-len(kept):]  # the newest, oldest first
    oldest = live.get("/history?offset=0")
    assert len(oldest.body) <= 20_000 and oldest.headers[TRUNCATED_HEADER] == "true"
    assert list(oldest.json()) == ids[:len(list(oldest.json()))]
    small = live.get("/history?max_items=2")
    assert list(small.json()) == ids[-2:] and TRUNCATED_HEADER not in small.headers


def test_history_of_large_entries_stays_bounded_under_concurrent_requests(tmp_path: Path) -> None:
    """Entries stored before extra_data was limited (written straight into the queue) cannot blow up a reply."""
    root = tmp_path / "big"
    settings = Settings.model_validate({"data_dir": root / "data"})
    with PromptQueue(settings.database_path) as queue:
        for n in range(12):
            queue.put(f"big{n}", chain_prompt(n), {"blob": "x" * 3_000_000}, ["3"])
            assert queue.get(timeout=0) is not None
            queue.finish(f"big{n}", outputs={}, status={"status_str": "success", "completed": True, "messages": []})
    live = start_live_server(root, max_history_reply_bytes=8 * 1024**2)
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            started = time.monotonic()
            replies = list(pool.map(lambda _: live.get("/history"), range(6)))
            elapsed = time.monotonic() - started
    finally:
        live.stop()
    assert all(r.status == 200 and len(r.body) <= 8 * 1024**2 for r in replies)
    assert all(r.headers[TRUNCATED_HEADER] == "true" and "big11" in r.json() for r in replies)
    assert elapsed < 5.0, f"6 concurrent GET /history took {elapsed:.2f} s"


@pytest.mark.slow
def test_history_of_10000_entries_answers_in_under_a_second(tmp_path: Path) -> None:
    root = tmp_path / "full"
    settings = Settings.model_validate({"data_dir": root / "data"})
    workflow = {"nodes": [{"id": n, "type": "StubInt", "widgets_values": [n]} for n in range(20)]}
    with PromptQueue(settings.database_path, max_history=settings.max_history) as queue:
        for n in range(settings.max_history + 5):
            queue.put(f"p{n}", chain_prompt(n), {"extra_pnginfo": {"workflow": workflow}}, ["3"])
            assert queue.get(timeout=0) is not None
            queue.finish(f"p{n}", outputs={"3": {"value": [n]}},
                         status={"status_str": "success", "completed": True, "messages": []})
    live = start_live_server(root)
    try:
        live.get("/history?max_items=1")  # warm the connection path
        started = time.monotonic()
        reply = live.get("/history")
        elapsed = time.monotonic() - started
    finally:
        live.stop()
    history = reply.json()
    assert len(history) == 10_000 and "p4" not in history and "p10004" in history  # max_history enforced
    assert TRUNCATED_HEADER not in reply.headers
    assert elapsed < 1.0, f"GET /history of 10,000 entries took {elapsed:.2f} s"


# --------------------------------------------------------------------------- item 2: limits documented, 413


def test_size_limits_are_documented_and_enforced_with_413(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(max_upload_bytes=10_000, max_extra_data_bytes=1_000)
    doc = live.get("/openapi.json").json()
    validate_spec(doc)
    contract = Contract(doc)
    body_limit = max_body_bytes(10_000)
    for path in ("/prompt", "/upload/image", "/upload/mask", "/api/prompt"):
        operation = doc["paths"][path]["post"]
        assert operation["x-loom-max-body-bytes"] == body_limit and "413" in operation["responses"]
    assert doc["paths"]["/prompt"]["post"]["x-loom-limits"] == {"max_extra_data_bytes": 1_000}
    assert doc["paths"]["/upload/image"]["post"]["x-loom-limits"]["max_upload_bytes"] == 10_000
    assert doc["paths"]["/history"]["get"]["x-loom-limits"]["max_history"] == 10_000

    too_long = live.post("/prompt", {"prompt": chain_prompt(1), "pad": "x" * body_limit})
    too_rich = live.post("/prompt", {"prompt": chain_prompt(1), "extra_data": {"blob": "x" * 2_000}})
    for reply in (too_long, too_rich):
        assert reply.status == 413, reply.body[:300]
        assert contract.reply_errors("/prompt", "post", reply) == []
    for path in ("/upload/image", "/upload/mask"):
        for size in (20_000, body_limit + 1):
            reply = live.upload(path, b"x" * size)
            assert reply.status == 413, (path, size, reply.body[:300])
            assert contract.reply_errors(path, "post", reply) == []
