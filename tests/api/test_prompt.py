"""POST /prompt, /queue, /history, /interrupt, /free: shapes, errors and operations."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.api.conftest import TIMEOUT, LiveServer, chain_prompt
from tests.api.test_routes import assert_error_schema


@pytest.fixture
def gate(server: LiveServer) -> Iterator[Callable[..., str]]:
    """Queue a prompt that blocks the worker in StubGate until the test ends (or opens it)."""
    server.controls.gate.clear()
    server.controls.entered.clear()

    def hold(client_id: str | None = None) -> str:
        prompt_id = server.queue_prompt(chain_prompt(1, middle="StubGate", tag=uuid.uuid4().hex),
                                        client_id=client_id)
        assert server.controls.entered.wait(TIMEOUT), "the gate node never started"
        return prompt_id

    yield hold
    server.controls.gate.set()
    server.wait_idle()


def ui_workflow(value: int) -> dict[str, Any]:
    """Editor format: StubInt(value) -> StubShow, with a note that must disappear."""
    return {
        "last_node_id": 3, "last_link_id": 1, "version": 0.4, "config": {}, "extra": {}, "groups": [],
        "nodes": [
            {"id": 1, "type": "StubInt", "mode": 0, "inputs": [],
             "outputs": [{"name": "INT", "type": "INT", "links": [1], "slot_index": 0}],
             "widgets_values": [value]},
            {"id": 2, "type": "StubShow", "mode": 0, "inputs": [{"name": "value", "type": "INT", "link": 1}],
             "outputs": [], "widgets_values": []},
            {"id": 3, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["hello"]},
        ],
        "links": [[1, 1, 0, 2, 0, "INT"]],
    }


def test_post_prompt_success_shape(server: LiveServer) -> None:
    reply = server.post("/prompt", {"prompt": chain_prompt(101), "client_id": "me"})
    assert reply.status == 200
    body = reply.json()
    assert set(body) == {"prompt_id", "number", "node_errors"}
    assert isinstance(body["prompt_id"], str) and uuid.UUID(body["prompt_id"])
    assert isinstance(body["number"], int | float) and body["node_errors"] == {}
    entry = server.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    number, prompt_id, prompt, extra_data, outputs = entry["prompt"]
    assert prompt_id == body["prompt_id"] and number == body["number"]
    assert extra_data["client_id"] == "me" and outputs == ["3"]
    assert entry["outputs"] == {"3": {"text": ["102"]}}


def test_client_prompt_id_is_used_and_duplicates_refused(server: LiveServer) -> None:
    chosen = f"mine-{uuid.uuid4().hex}"
    reply = server.post("/api/prompt", {"prompt": chain_prompt(102), "prompt_id": chosen})
    assert reply.status == 200 and reply.json()["prompt_id"] == chosen
    server.wait_history(chosen)
    again = server.post("/prompt", {"prompt": chain_prompt(102), "prompt_id": chosen})
    assert again.status == 400
    assert_error_schema(again.json(), "duplicate_prompt_id")


def test_validation_error_shape(server: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "StubInt", "inputs": {"value": 10**12}},
        "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}},
    }
    reply = server.post("/prompt", {"prompt": prompt})
    assert reply.status == 400
    body = reply.json()
    assert_error_schema({"error": body["error"], "node_errors": {}}, "prompt_outputs_failed_validation")
    node = body["node_errors"]["1"]
    assert set(node) == {"errors", "dependent_outputs", "class_type"}
    assert node["class_type"] == "StubInt" and node["dependent_outputs"] == ["2"]
    error = node["errors"][0]
    assert set(error) == {"type", "message", "details", "extra_info"}
    assert error["type"] == "value_bigger_than_max" and error["extra_info"]["input_name"] == "value"


def test_unknown_node_and_malformed_prompt(server: LiveServer) -> None:
    unknown = server.post("/prompt", {"prompt": {"1": {"class_type": "Nope", "inputs": {}},
                                                 "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}}})
    assert unknown.status == 400 and "1" in unknown.json()["node_errors"]
    for bad in ({"1": "not a node"}, {"1": {"inputs": {}}}, {}):
        reply = server.post("/prompt", {"prompt": bad})
        assert reply.status == 400, bad
        assert {"error", "node_errors"} == set(reply.json())


def test_no_prompt_body_is_comfyui_exact(server: LiveServer) -> None:
    reply = server.post("/prompt", {"client_id": "x"})
    assert reply.status == 400
    assert reply.json() == {"error": {"type": "no_prompt", "message": "No prompt provided",
                                      "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe\x00",
                                  b"[" * 100_000 + b"]" * 100_000, b'{"prompt": "a string"}',
                                  b'{"prompt": {"1": {}}, "front": "sideways"}'])
def test_bad_bodies_are_400_and_server_keeps_serving(server: LiveServer, body: bytes) -> None:
    reply = server.request("POST", "/prompt", body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400, reply.body
    assert_error_schema(reply.json())
    assert server.get("/prompt").status == 200


def test_nan_priority_number_refused(server: LiveServer) -> None:
    body = b'{"prompt": {"1": {"class_type": "StubShow", "inputs": {"value": ["2", 0]}}, ' \
           b'"2": {"class_type": "StubInt", "inputs": {"value": 1}}}, "number": NaN}'
    reply = server.request("POST", "/prompt", body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400
    assert_error_schema(reply.json(), "invalid_json")  # NaN is not JSON: refused while parsing
    assert reply.json()["error"]["extra_info"]["path"] == "$.number"


@pytest.mark.parametrize("key", ["prompt", "workflow"])
def test_ui_workflow_is_accepted(server: LiveServer, key: str) -> None:
    value = 300 + len(key)
    workflow = ui_workflow(value)
    reply = server.post("/prompt", {key: workflow, "client_id": "ui"})
    assert reply.status == 200, reply.body
    entry = server.wait_history(reply.json()["prompt_id"])
    assert entry["outputs"] == {"2": {"text": [str(value)]}}
    _, _, api_prompt, extra_data, _ = entry["prompt"]
    assert set(api_prompt) == {"1", "2"} and api_prompt["1"]["class_type"] == "StubInt"
    assert extra_data["extra_pnginfo"]["workflow"] == workflow


def test_ui_workflow_keeps_client_workflow_metadata(server: LiveServer) -> None:
    mine = {"nodes": [], "links": [], "note": "client's own copy"}
    reply = server.post("/prompt", {"prompt": ui_workflow(7), "extra_data": {"extra_pnginfo": {"workflow": mine}}})
    entry = server.wait_history(reply.json()["prompt_id"])
    assert entry["prompt"][3]["extra_pnginfo"]["workflow"] == mine


def test_ui_workflow_with_unknown_node_is_400(server: LiveServer) -> None:
    workflow = ui_workflow(1)
    workflow["nodes"][0]["type"] = "NoSuchNode"
    reply = server.post("/prompt", {"prompt": workflow})
    assert reply.status == 400 and "1" in reply.json()["node_errors"]
    workflow = ui_workflow(1)
    workflow["links"] = [["x", "y", "z", 2, 0, "INT"]]
    reply = server.post("/prompt", {"prompt": workflow})
    assert reply.status == 400
    assert_error_schema(reply.json())


def test_partial_targets_and_dropped_outputs(server: LiveServer) -> None:
    prompt = chain_prompt(400)
    prompt["4"] = {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}
    prompt["5"] = {"class_type": "StubShow", "inputs": {"value": ["9", 0]}}  # broken output
    reply = server.post("/prompt", {"prompt": prompt, "partial_execution_targets": ["4"]})
    assert reply.status == 200
    entry = server.wait_history(reply.json()["prompt_id"])
    assert entry["prompt"][4] == ["4"] and set(entry["outputs"]) == {"4"}
    reply = server.post("/prompt", {"prompt": prompt})
    assert reply.status == 200
    body = reply.json()
    assert "5" in body["node_errors"]  # dropped, the others still run
    entry = server.wait_history(body["prompt_id"])
    assert set(entry["outputs"]) == {"3", "4"}


def test_queue_shapes_priority_and_scrubbing(server: LiveServer, gate: Callable[..., str]) -> None:
    running_id = gate("queue-client")
    a = server.queue_prompt(chain_prompt(501))
    b = server.queue_prompt(chain_prompt(502), extra_data={"api_key_comfy_org": "secret-key"})
    front = server.post("/prompt", {"prompt": chain_prompt(503), "front": True}).json()
    assert front["number"] < 0
    queue = server.get("/queue").json()
    assert [item[1] for item in queue["queue_running"]] == [running_id]
    running = queue["queue_running"][0]
    assert len(running) == 5 and running[3]["client_id"] == "queue-client" and running[4] == ["3"]
    assert [item[1] for item in queue["queue_pending"]] == [front["prompt_id"], a, b]
    assert "secret-key" not in server.get("/queue").body.decode()
    assert server.get("/prompt").json() == {"exec_info": {"queue_remaining": 4}}


def test_queue_delete_clear_and_delete_running(server: LiveServer, gate: Callable[..., str]) -> None:
    running_id = gate()
    a = server.queue_prompt(chain_prompt(601))
    b = server.queue_prompt(chain_prompt(602))
    c = server.queue_prompt(chain_prompt(603))
    assert server.post("/queue", {"delete": [a]}).status == 200
    assert [i[1] for i in server.get("/queue").json()["queue_pending"]] == [b, c]
    assert server.post("/api/queue", {"clear": True}).status == 200
    assert server.get("/queue").json()["queue_pending"] == []
    assert server.post("/queue", {"delete": [running_id]}).status == 200
    entry = server.wait_history(running_id)
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]


def test_interrupt_only_the_named_prompt(server: LiveServer, gate: Callable[..., str]) -> None:
    running_id = gate()
    assert server.post("/interrupt", {"prompt_id": "some-other-prompt"}).status == 200
    assert server.controls.wait_polled(TIMEOUT), "the gate node stopped: the other prompt's interrupt reached it"
    assert server.get("/queue").json()["queue_running"][0][1] == running_id
    assert server.post("/interrupt", {"prompt_id": running_id}).status == 200
    entry = server.wait_history(running_id)
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_interrupted"


def test_global_interrupt_with_empty_body(server: LiveServer, gate: Callable[..., str]) -> None:
    running_id = gate()
    assert server.request("POST", "/api/interrupt").status == 200
    assert server.wait_history(running_id)["status"]["completed"] is False


def test_history_listing_and_operations(server: LiveServer) -> None:
    ids = [server.queue_prompt(chain_prompt(700 + i)) for i in range(3)]
    for prompt_id in ids:
        server.wait_history(prompt_id)
    history = server.get("/history").json()
    assert list(history)[-3:] == ids
    entry = history[ids[0]]
    assert {"prompt", "outputs", "status", "meta"} <= set(entry)
    assert set(entry["status"]) == {"status_str", "completed", "messages"}
    assert list(server.get("/history?max_items=2&offset=-1").json()) == ids[1:]
    assert list(server.get("/history?max_items=2").json()) == ids[1:]  # ComfyUI's default offset is -1
    total = len(history)
    assert list(server.get(f"/history?max_items=1&offset={total - 3}").json()) == ids[:1]
    bad = server.get("/history?max_items=lots")
    assert bad.status == 400
    assert_error_schema(bad.json(), "invalid_request")
    assert server.post("/history", {"delete": [ids[0]]}).status == 200
    assert server.get(f"/history/{ids[0]}").json() == {}
    assert ids[1] in server.get(f"/api/history/{ids[1]}").json()
    assert server.post("/history", {"clear": True}).status == 200
    assert server.get("/history").json() == {}


def test_free_clears_the_cache(server: LiveServer) -> None:
    server.wait_history(server.queue_prompt(chain_prompt(800)))
    assert len(server.cache) > 0
    assert server.post("/free", {"unload_models": True, "free_memory": True}).status == 200
    deadline = time.monotonic() + TIMEOUT
    while len(server.cache) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.cache) == 0
    bad = server.post("/free", {"free_memory": "sometimes"})
    assert bad.status == 400


def test_queue_full_is_503(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(max_queue=1)
    live.controls.gate.clear()
    live.queue_prompt(chain_prompt(1, middle="StubGate", tag="full"))
    assert live.controls.entered.wait(TIMEOUT)
    live.queue_prompt(chain_prompt(2))
    reply = live.post("/prompt", {"prompt": chain_prompt(3)})
    assert reply.status == 503
    assert_error_schema(reply.json(), "queue_full")
    live.controls.gate.set()
    live.wait_idle()
    assert live.post("/prompt", {"prompt": chain_prompt(4)}).status == 200
