"""POST /prompt with workflows and prompts as ComfyUI writes them today: subgraphs run under the frontend's
execution ids ("74:10") through validation, execution, websocket events and history; old API prompts without
an input added since take its default with a warning; links with numeric node ids work."""

from __future__ import annotations

import uuid
from typing import Any

from tests.api.conftest import LiveServer, collect_until_done
from tests.support.comfy_format import SUBGRAPH_IN, SUBGRAPH_OUT, definition, inp, link, node, out, workflow

ADDER = "5e0c2f1a-7b3d-4e8f-9a1b-2c3d4e5f6a7b"


def subgraph_workflow(value: int, b: int) -> dict[str, Any]:
    """StubInt(value) -> instance 74 of "Add and show" (StubAdd 10, b promoted; StubShow 11 inside)
    -> StubAdd 3 (+1000) -> StubShow 2."""
    sub = definition(ADDER, "Add and show", inputs=[("a", "INT"), ("b", "INT")], outputs=[("sum", "INT")],
                     links=[link(1, SUBGRAPH_IN, 0, 10, 0, "INT"), link(3, SUBGRAPH_IN, 1, 10, 1, "INT"),
                            link(4, 10, 0, 11, 0, "INT"), link(2, 10, 0, SUBGRAPH_OUT, 0, "INT")],
                     nodes=[node(10, "StubAdd", inputs=[inp("a", "INT", 1), inp("b", "INT", 3, widget=True)],
                                 outputs=[out("sum", "INT", [2, 4])], widgets=[0]),
                            node(11, "StubShow", inputs=[inp("value", "*", 4)], title="Shown inside")])
    nodes = [node(1, "StubInt", outputs=[out("INT", "INT", [1])], widgets=[value]),
             node(74, ADDER, inputs=[inp("a", "INT", 1)], outputs=[out("sum", "INT", [2])], widgets=[b]),
             node(3, "StubAdd", inputs=[inp("a", "INT", 2)], outputs=[out("sum", "INT", [3])], widgets=[1000]),
             node(2, "StubShow", inputs=[inp("value", "*", 3)])]
    links = [[1, 1, 0, 74, 0, "INT"], [2, 74, 0, 3, 0, "INT"], [3, 3, 0, 2, 0, "INT"]]
    return workflow(nodes, links, subgraphs=[sub])


def test_subgraph_workflow_runs_under_execution_ids(server: LiveServer) -> None:
    client = uuid.uuid4().hex
    ws = server.ws(client)
    try:
        wf = subgraph_workflow(300, 4)
        reply = server.post("/prompt", {"prompt": wf, "client_id": client})
        assert reply.status == 200, reply.body
        body = reply.json()
        assert set(body) == {"prompt_id", "number", "node_errors"}
        prompt_id = body["prompt_id"]
        messages = collect_until_done(ws, prompt_id)
    finally:
        ws.close()
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
    assert set(executing) == {"1", "74:10", "74:11", "3", "2"}
    executed = {m["data"]["node"]: m["data"] for m in messages if m["type"] == "executed"}
    assert executed["74:11"]["output"] == {"text": ["304"]} and executed["74:11"]["display_node"] == "74:11"
    entry = server.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"] == {"74:11": {"text": ["304"]}, "2": {"text": ["1304"]}}
    _, _, prompt, extra_data, outputs = entry["prompt"]
    assert set(prompt) == {"1", "74:10", "74:11", "3", "2"} and sorted(outputs) == ["2", "74:11"]
    assert prompt["74:10"]["inputs"] == {"a": ["1", 0], "b": 4}
    assert extra_data["extra_pnginfo"]["workflow"] == wf  # the editor workflow, as saved, for the PNGs


def test_subgraph_workflow_sent_as_workflow_and_with_a_missing_definition(server: LiveServer) -> None:
    reply = server.post("/prompt", {"workflow": subgraph_workflow(10, 1)})
    assert reply.status == 200, reply.body
    assert server.wait_history(reply.json()["prompt_id"])["outputs"]["74:11"] == {"text": ["11"]}
    broken = subgraph_workflow(10, 1)
    broken["definitions"]["subgraphs"] = []
    reply = server.post("/prompt", {"prompt": broken})
    assert reply.status == 400
    [error] = reply.json()["node_errors"]["74"]["errors"]
    assert "definitions.subgraphs" in error["details"] and ADDER in error["details"]


def test_old_prompt_missing_a_defaulted_input_runs_with_a_warning(server: LiveServer) -> None:
    prompt = {"1": {"class_type": "StubInt", "inputs": {"value": 500}},
              "2": {"class_type": "StubAdd", "inputs": {"a": [1, 0]}},  # no b (default 1); a numeric node id
              "3": {"class_type": "StubShow", "inputs": {"value": ["2", 0]}}}
    reply = server.post("/prompt", {"prompt": prompt})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert set(body) == {"prompt_id", "number", "node_errors", "warnings"}
    [warning] = body["warnings"]
    assert set(warning) == {"node_id", "class_type", "input_name", "message"}
    assert (warning["node_id"], warning["class_type"], warning["input_name"]) == ("2", "StubAdd", "b")
    assert server.wait_history(body["prompt_id"])["outputs"] == {"3": {"text": ["501"]}}
    # A socket input left out is still an error.
    del prompt["2"]["inputs"]["a"]
    reply = server.post("/prompt", {"prompt": prompt})
    assert reply.status == 400
    assert reply.json()["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"
