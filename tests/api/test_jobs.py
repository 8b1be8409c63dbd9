"""ComfyUI's jobs API (``/api/jobs``) on a real server on loopback: the queue and history seen as jobs, with
the shapes, filters, sorting, paging, detail, assets and cancelling that ComfyUI's frontend uses."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.queue import PromptQueue
from tests.api.conftest import LiveServer, chain_prompt, start_live_server

TOKEN = "a-long-enough-token-for-the-tests-0123"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path)
    yield server
    server.stop()


def image_prompt(color: int) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "jobs"}}}


def gate_prompt() -> dict[str, Any]:
    return chain_prompt(1, middle="StubGate", tag=uuid.uuid4().hex)


def jobs(live: LiveServer, query: str = "") -> dict[str, Any]:
    reply = live.get(f"/api/jobs{query}")
    assert reply.status == 200, reply.body
    return dict(reply.json())


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


def test_running_pending_and_finished_prompts_are_jobs(live: LiveServer) -> None:
    workflow = {"id": "wf-123", "nodes": [], "links": []}
    running = live.queue_prompt(gate_prompt(), extra_data={"extra_pnginfo": {"workflow": workflow}})
    assert live.controls.entered.wait(20)
    before_ms = int(time.time() * 1000)
    pending = live.queue_prompt(image_prompt(0xFF0000))

    listed = jobs(live)
    assert [(job["id"], job["status"]) for job in listed["jobs"]] == [(pending, "pending"), (running, "in_progress")]
    assert listed["pagination"] == {"offset": 0, "limit": None, "total": 2, "has_more": False}
    first = listed["jobs"][1]
    assert first["workflow_id"] == "wf-123" and first["outputs_count"] == 0 and isinstance(first["priority"], int)
    assert abs(listed["jobs"][0]["create_time"] - before_ms) < 10_000
    assert [job["id"] for job in jobs(live, "?status=pending")["jobs"]] == [pending]
    assert [job["id"] for job in jobs(live, "?status=in_progress&workflow_id=wf-123")["jobs"]] == [running]

    live.controls.gate.set()
    live.wait_history(pending)
    finished = jobs(live, "?status=completed,failed,cancelled")["jobs"]
    assert [job["id"] for job in finished] == [pending, running]  # newest first
    image_job = finished[0]
    assert image_job["status"] == "completed"
    assert image_job["execution_start_time"] <= image_job["execution_end_time"]
    assert image_job["outputs_count"] == 1 and image_job["previewable_outputs_count"] == 1
    preview = image_job["preview_output"]
    assert preview["nodeId"] == "2" and preview["mediaType"] == "images" and preview["type"] == "output"
    assert preview["filename"].startswith("jobs_") and (live.settings.output_dir / preview["filename"]).is_file()
    assert finished[1]["outputs_count"] == 0 and "preview_output" not in finished[1]  # StubShow shows text: no file


def test_failed_and_interrupted_prompts(live: LiveServer) -> None:
    failed = live.queue_prompt(chain_prompt(3, middle="StubFail"))
    live.wait_history(failed)
    stopped = live.queue_prompt(gate_prompt())
    assert live.controls.entered.wait(20)
    assert live.post("/interrupt", {}).status == 200
    live.wait_history(stopped)

    by_id = {job["id"]: job for job in jobs(live)["jobs"]}
    assert by_id[failed]["status"] == "failed"
    error = by_id[failed]["execution_error"]
    assert error["node_type"].endswith("StubFail") and error["exception_message"]
    assert by_id[stopped]["status"] == "cancelled" and "execution_error" not in by_id[stopped]
    assert [job["id"] for job in jobs(live, "?status=cancelled")["jobs"]] == [stopped]


def test_sorting_and_paging(live: LiveServer) -> None:
    ids = [live.queue_prompt(image_prompt(color)) for color in (1, 2, 3)]
    for prompt_id in ids:
        live.wait_history(prompt_id)
    newest_first = list(reversed(ids))
    page = jobs(live, "?limit=2")
    assert [job["id"] for job in page["jobs"]] == newest_first[:2]
    assert page["pagination"] == {"offset": 0, "limit": 2, "total": 3, "has_more": True}
    page = jobs(live, "?limit=2&offset=2")
    assert [job["id"] for job in page["jobs"]] == newest_first[2:]
    assert page["pagination"]["has_more"] is False
    assert [job["id"] for job in jobs(live, "?sort_order=asc")["jobs"]] == ids
    by_duration = jobs(live, "?sort_by=execution_duration&sort_order=asc")["jobs"]
    durations = [job["execution_end_time"] - job["execution_start_time"] for job in by_duration]
    assert durations == sorted(durations)


@pytest.mark.parametrize("query", ["?status=done", "?status=pending,bogus", "?sort_by=name", "?sort_order=up",
                                   "?limit=0", "?limit=-3", "?limit=many", "?offset=x"])
def test_bad_listing_parameters_are_400(live: LiveServer, query: str) -> None:
    reply = live.get(f"/api/jobs{query}")
    assert reply.status == 400, reply.body
    assert "error" in reply.json()


def test_one_job_in_detail_and_its_assets(live: LiveServer) -> None:
    prompt_id = live.queue_prompt(image_prompt(0x00FF00))
    live.wait_history(prompt_id)
    job = live.get(f"/api/jobs/{prompt_id}").json()
    assert job["id"] == prompt_id and job["status"] == "completed"
    assert job["workflow"]["prompt"] == image_prompt(0x00FF00)
    assert "create_time" in job["workflow"]["extra_data"]
    assert job["execution_status"]["status_str"] == "success"
    [image] = job["outputs"]["2"]["images"]

    assets = live.get(f"/api/jobs/{prompt_id}/assets?limit=10&offset=0").json()
    assert assets["job_id"] == prompt_id
    assert assets["pagination"] == {"offset": 0, "limit": 10, "total": 1, "has_more": False}
    [asset] = assets["assets"]
    assert asset["name"] == image["filename"] and asset["mime_type"] == "image/png"
    assert asset["node_id"] == "2" and asset["output_key"] == "images" and asset["output_index"] == 0
    viewed = live.get(asset["preview_url"])
    assert viewed.status == 200 and viewed.body[:8] == b"\x89PNG\r\n\x1a\n"

    assert live.get("/api/jobs/no-such-job").status == 404
    assert live.get("/api/jobs/no-such-job/assets").status == 404


def test_a_queued_job_is_a_summary(live: LiveServer) -> None:
    running = live.queue_prompt(gate_prompt())
    assert live.controls.entered.wait(20)
    job = live.get(f"/api/jobs/{running}").json()
    assert job["status"] == "in_progress" and "outputs" not in job
    assert live.get(f"/api/jobs/{running}/assets").json()["assets"] == []
    live.controls.gate.set()
    live.wait_history(running)


def test_cancelling_pending_and_running_jobs(live: LiveServer) -> None:
    running = live.queue_prompt(gate_prompt())
    assert live.controls.entered.wait(20)
    pending = [live.queue_prompt(image_prompt(color)) for color in (4, 5, 6)]

    assert live.post(f"/api/jobs/{pending[0]}/cancel").json() == {"cancelled": [pending[0]]}
    reply = live.post("/api/jobs/cancel", {"job_ids": [pending[1], pending[1], "no-such-job"]})
    assert reply.json() == {"cancelled": [pending[1]]}
    assert [job["id"] for job in jobs(live, "?status=pending")["jobs"]] == [pending[2]]

    assert live.post(f"/api/jobs/{running}/cancel").json() == {"cancelled": [running]}
    live.wait_history(running)
    assert live.get(f"/api/jobs/{running}").json()["status"] == "cancelled"
    live.wait_history(pending[2])
    assert live.post(f"/api/jobs/{running}/cancel").json() == {"cancelled": []}  # already finished
    assert live.post("/api/jobs/no-such-job/cancel").status == 404
    for body in ({"job_ids": []}, {"job_ids": "x"}, {"job_ids": [1]}, {"job_ids": ["a"] * 101}, [1]):
        assert live.post("/api/jobs/cancel", body).status == 400, body


def test_history_written_before_is_listed_and_summaries_follow_deletes(tmp_path: Path) -> None:
    queue = PromptQueue(tmp_path / "data" / "queue.sqlite3")
    queue.put("old", chain_prompt(1), {}, ["3"])
    item = queue.get(timeout=1)
    assert item is not None
    queue.finish("old", outputs={}, status={"status_str": "success", "completed": True, "messages": [
        ["execution_start", {"prompt_id": "old", "timestamp": 1000}],
        ["execution_success", {"prompt_id": "old", "timestamp": 1500}]]})
    queue.close()

    live = start_live_server(tmp_path)
    try:
        [old] = jobs(live)["jobs"]
        assert old["create_time"] == 1000  # no create_time stamped then: its start stands in
        assert old["execution_end_time"] == 1500
        newer = live.queue_prompt(image_prompt(7))
        live.wait_history(newer)
        assert [job["id"] for job in jobs(live)["jobs"]] == [newer, "old"]
        assert live.post("/history", {"delete": ["old"]}).status == 200
        assert [job["id"] for job in jobs(live)["jobs"]] == [newer]
    finally:
        live.stop()


def test_the_token_and_origin_checks_guard_the_jobs_routes(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(auth_token=TOKEN)
    for method, path in (("GET", "/api/jobs"), ("GET", "/api/jobs/x"), ("GET", "/api/jobs/x/assets"),
                         ("POST", "/api/jobs/x/cancel"), ("POST", "/api/jobs/cancel")):
        assert live.request(method, path, auth=False).status == 401, path
    assert live.get("/api/jobs").status == 200
    foreign = live.request("POST", "/api/jobs/cancel", json_body={"job_ids": ["x"]},
                           headers={"Origin": "http://evil.example"})
    assert foreign.status == 403
