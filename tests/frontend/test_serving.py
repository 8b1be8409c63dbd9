"""The server serves the editor: index.html at /, its modules and litegraph under /frontend/, the default workflow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import LiveServer, start_live_server

REPO = Path(__file__).resolve().parents[2]
LITEGRAPH = "frontend/node_modules/@comfyorg/litegraph/dist/litegraph.es.js"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path_factory.mktemp("loom-serving"), frontend_dir=REPO / "frontend")
    yield server
    server.stop()


def test_index_is_the_editor_page(live: LiveServer) -> None:
    reply = live.get("/")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
    page = reply.body.decode()
    assert 'id="graph-canvas"' in page and "/frontend/src/app.js" in page
    assert '"litegraph": "/frontend/node_modules/@comfyorg/litegraph/dist/litegraph.es.js"' in page


def test_modules_are_served_as_javascript(live: LiveServer) -> None:
    for name in ("app.js", "api.js", "nodes.js", "graph.js", "overlay.js"):
        reply = live.get(f"/frontend/src/{name}")
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/javascript"), name
    if not (REPO / LITEGRAPH).is_file():
        pytest.skip("frontend packages missing: run `npm ci --prefix frontend`")
    reply = live.get("/" + LITEGRAPH)
    assert reply.status == 200 and b"LGraphCanvas" in reply.body


def test_paths_outside_the_frontend_folder_are_refused(live: LiveServer) -> None:
    for path in ("/frontend/../pyproject.toml", "/frontend/%2e%2e/pyproject.toml", "/frontend/src/../../Makefile"):
        assert live.get(path).status in (400, 404), path


def test_default_workflow_is_txt2img_on_the_demo_model(live: LiveServer) -> None:
    reply = live.get("/loom/default-workflow")
    assert reply.status == 200
    workflow = reply.json()
    assert workflow == json.loads((REPO / "workflows" / "txt2img.json").read_text())
    [loader] = [n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple"]
    assert loader["widgets_values"] == ["tiny-shapes.safetensors"]


def test_workflow_conversion_routes_round_trip(live: LiveServer) -> None:
    workflow = json.loads((REPO / "workflows" / "controlnet.json").read_text())
    to_api = live.post("/loom/workflow/api", workflow)
    assert to_api.status == 200
    api = to_api.json()
    assert {v["class_type"] for v in api.values()} >= {"ControlNetApplyAdvanced", "LoadImage", "KSampler"}
    to_editor = live.post("/loom/workflow/editor", api)
    assert to_editor.status == 200 and to_editor.json() == workflow
    assert live.post("/loom/workflow/api", to_editor.json()).json() == api


def test_workflow_conversion_routes_name_the_bad_node(live: LiveServer) -> None:
    reply = live.post("/loom/workflow/editor", {"7": {"class_type": "NoSuchNode", "inputs": {}}})
    assert reply.status == 400
    assert "NoSuchNode" in reply.json()["error"]["details"] and "7" in reply.json()["node_errors"]
    reply = live.post("/loom/workflow/api", {"nodes": [{"id": 3, "type": "NoSuchNode"}], "links": []})
    assert reply.status == 400 and "3" in reply.json()["node_errors"]
    assert live.post("/loom/workflow/api", {"nodes": 5}).status == 400
