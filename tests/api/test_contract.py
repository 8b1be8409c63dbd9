"""The wire keeps its contract: every route's live reply and every websocket frame of a real txt2img run
(on the shipped demo checkpoint) validate against the server's own /openapi.json."""

from __future__ import annotations

import http.client
import importlib.util
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate as validate_spec

from engine.api.messages import text_events
from engine.api.operation import Operation, served_paths
from engine.api.routes import operations
from tests.api.conftest import (
    TIMEOUT,
    LiveServer,
    Reply,
    chain_prompt,
    collect_until_done,
    png_bytes,
    start_live_server,
)
from tests.api.contract import Contract

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 180.0


def txt2img(seed: int = 1) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "contract"}},
    }


@dataclass
class Run:
    """What the websocket scenario left behind: every text frame, the txt2img prompt and its image."""

    frames: list[dict[str, Any]]
    prompt_id: str
    image: dict[str, str]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("contract")
    (root / "user").mkdir()  # multi-user, so that POST /users answers 2xx; requests without Comfy-User are "default"
    (root / "user" / "users.json").write_text(json.dumps({"default": "default"}))
    server = start_live_server(root, models_dirs=(REPO / "models",), frontend_dir=REPO / "frontend",
                               multi_user=True)
    (root / "input").mkdir(exist_ok=True)
    (root / "input" / "original.png").write_bytes(png_bytes((8, 8), text={"note": "kept"}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def contract(live: LiveServer) -> Contract:
    doc = live.get("/openapi.json").json()
    validate_spec(doc)
    return Contract(doc)


def _interrupted_run(live: LiveServer, client: str) -> list[dict[str, Any]]:
    """A prompt stopped while it runs, seen from a socket that reconnected meanwhile (status + executing)."""
    live.controls.gate.clear()
    live.controls.entered.clear()
    prompt_id = live.queue_prompt(chain_prompt(7, middle="StubGate", tag=uuid.uuid4().hex), client_id=client)
    assert live.controls.entered.wait(TIMEOUT)
    again = live.ws(client)
    try:
        assert live.post("/interrupt", {}).status == 200
        return collect_until_done(again, prompt_id)
    finally:
        again.close()


@pytest.fixture(scope="module")
def run(live: LiveServer) -> Run:
    """txt2img, the same again (all cached), a failing prompt and an interrupted one, over one client's sockets."""
    client = uuid.uuid4().hex
    ws = live.ws(client)
    try:
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": False}}))
        prompt_id = live.queue_prompt(txt2img(), client_id=client)
        frames = collect_until_done(ws, prompt_id, RUN_TIMEOUT)
        frames += collect_until_done(ws, live.queue_prompt(txt2img(), client_id=client), RUN_TIMEOUT)
        frames += collect_until_done(ws, live.queue_prompt(chain_prompt(3, middle="StubFail"), client_id=client))
        frames += _interrupted_run(live, client)
    finally:
        ws.close()
    [executed, *_] = [f["data"] for f in frames if f["type"] == "executed" and f["data"]["node"] == "9"]
    return Run(frames, prompt_id, executed["output"]["images"][0])


# --------------------------------------------------------------------------- websocket


def test_every_websocket_frame_of_a_real_run_matches_its_schema(contract: Contract, run: Run) -> None:
    problems = [error for frame in run.frames for error in contract.frame_errors(frame)]
    assert problems == []
    assert {frame["type"] for frame in run.frames} == set(contract.messages), "every message type was seen"


def test_event_schemas_are_made_from_the_event_dataclasses(contract: Contract) -> None:
    schemas = contract.doc["components"]["schemas"]
    for cls in text_events():
        assert list(schemas[cls.__name__]["properties"]) == [f.name for f in fields(cls)]
        assert contract.messages[cls.type].endswith(f"WsMessage_{cls.type}")


# --------------------------------------------------------------------------- HTTP


def _requests(run: Run) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """(path parameter values, query strings by operation, JSON bodies by operation)."""
    path_values = {"prompt_id": run.prompt_id, "node_class": "KSampler", "folder": "checkpoints",
                   "path": "src/api.js", "directory_type": "output", "id": "Comfy.Locale",
                   "file": "contract%2Fdoc.json", "dest": "contract%2Fmoved.json", "job_id": run.prompt_id}
    queries = {"view": f"?filename={run.image['filename']}&type=output&subfolder={run.image['subfolder']}",
               "get_history": "?max_items=5", "list_userdata": "?dir=contract&recurse=true&full_info=true",
               "list_userdata_v2": "?path=contract", "post_userdata": "?full_info=true"}
    bodies = {
        "post_prompt": {"prompt": chain_prompt(11), "client_id": "contract"},
        "post_queue": {"clear": False, "delete": ["no-such-prompt"]},
        "post_history": {"delete": ["no-such-prompt"]},
        "post_interrupt": {"prompt_id": "no-such-prompt"},
        "post_free": {"unload_models": False, "free_memory": False},
        "workflow_to_api": json.loads((REPO / "workflows" / "txt2img.json").read_text()),
        "workflow_to_editor": txt2img(),
        "post_settings": {"Comfy.Locale": "en"},
        "post_setting": "en",
        "post_userdata": {"nodes": []},
        "cancel_job": None,
        "cancel_jobs": {"job_ids": ["no-such-prompt"]},
    }
    return path_values, queries, bodies


def _call(live: LiveServer, op: Operation, url: str, run: Run) -> Reply:
    _, queries, bodies = _requests(run)
    url += queries.get(op.name, "")
    if op.name in ("upload_image", "upload_mask"):
        ref = json.dumps({"filename": "original.png", "subfolder": "", "type": "input"})
        fields = {"original_ref": ref} if op.name == "upload_mask" else {}
        return live.upload(url, png_bytes((8, 8), (0, 0, 0, 128)), f"{op.name}.png", fields=fields)
    if op.tag == "userdata":  # the file each user data route names is there
        doc = live.settings.user_dir / "default" / "contract" / "doc.json"
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text('{"nodes": []}')
    if op.name == "post_users":
        return live.post(url, {"username": f"contract {uuid.uuid4().hex[:8]}"})
    if op.name == "move_userdata":
        return live.request("POST", url)
    if op.method == "DELETE":
        return live.request("DELETE", url)
    if op.method == "POST":
        return live.post(url, bodies[op.name])
    return live.get(url)


#: Routes serving files of ComfyUI's optional data packages: (the package, a file it has).
PACKAGE_FILES = {"template_file": ("comfyui_workflow_templates_json", "index.json"),
                 "docs_file": ("comfyui_embedded_docs", "KSampler/en.md")}
HTTP_ROUTES = [(op, path) for op in operations() if op.name != "websocket" for path in served_paths(op)]


@pytest.mark.parametrize(("op", "path"), HTTP_ROUTES, ids=[f"{op.method} {path}" for op, path in HTTP_ROUTES])
def test_every_route_answers_as_documented(live: LiveServer, contract: Contract, run: Run, op: Operation,
                                           path: str) -> None:
    path_values, _, _ = _requests(run)
    if op.name == "extension_file":
        pytest.skip("serves a custom node pack's web folder: tests/custom_nodes/test_packs.py")
    if op.name in PACKAGE_FILES:
        if importlib.util.find_spec(PACKAGE_FILES[op.name][0]) is None:
            pytest.skip(f"{PACKAGE_FILES[op.name][0]} is not installed (pip install -e '.[comfyui-frontend]')")
        path_values = {**path_values, "path": PACKAGE_FILES[op.name][1]}
    reply = _call(live, op, path.format(**path_values), run)
    assert 200 <= reply.status < 300, reply.body[:500]
    assert contract.reply_errors(path, op.method.lower(), reply) == []


def test_every_served_route_is_documented(contract: Contract) -> None:
    served = {(path, op.method.lower()) for op in operations() for path in served_paths(op)}
    assert served == {(path, method) for path, ops in contract.doc["paths"].items() for method in ops}


ERROR_PROBES: list[tuple[str, str, str, Any]] = [
    ("/view", "GET", "/view?filename=", None),
    ("/view", "GET", "/view?filename=missing.png", None),
    ("/view", "GET", "/view?filename=../secret.png", None),
    ("/models/{folder}", "GET", "/models/not_a_folder", None),
    ("/users", "POST", "/users", {"username": "  "}),
    ("/users", "POST", "/users", {"name": "no username"}),
    ("/settings", "POST", "/settings", [1]),
    ("/userdata", "GET", "/userdata", None),
    ("/userdata", "GET", "/userdata?dir=..", None),
    ("/userdata/{file}", "GET", "/userdata/missing.json", None),
    ("/userdata/{file}", "GET", "/userdata/..%2Fusers.json", None),
    ("/v2/userdata", "GET", "/v2/userdata?path=missing", None),
    ("/experiment/models/{folder}", "GET", "/experiment/models/not_a_folder", None),
    ("/internal/files/{directory_type}", "GET", "/internal/files/models", None),
    ("/prompt", "POST", "/prompt", {}),
    ("/prompt", "POST", "/prompt", {"prompt": {"1": {"class_type": "KSampler", "inputs": {}}}}),
    ("/queue", "POST", "/queue", {"delete": "not a list"}),
    ("/jobs", "GET", "/jobs?status=done", None),
    ("/jobs/{job_id}", "GET", "/jobs/no-such-prompt", None),
    ("/jobs/cancel", "POST", "/jobs/cancel", {"job_ids": []}),
    ("/frontend/{path}", "GET", "/frontend/missing.js", None),
    ("/loom/workflow/api", "POST", "/loom/workflow/api", []),
]


@pytest.mark.parametrize(("path", "method", "url", "body"), ERROR_PROBES, ids=[p[2] for p in ERROR_PROBES])
def test_errors_answer_as_documented(live: LiveServer, contract: Contract, path: str, method: str, url: str,
                                     body: Any) -> None:
    reply = live.get(url) if method == "GET" else live.post(url, body)
    assert 400 <= reply.status < 500, reply.body[:500]
    assert contract.reply_errors(path, method.lower(), reply) == []


def test_an_upload_that_is_no_image_answers_as_documented(live: LiveServer, contract: Contract) -> None:
    reply = live.upload("/upload/image", b"not an image", "fake.png")
    assert reply.status == 400
    assert contract.reply_errors("/upload/image", "post", reply) == []


# --------------------------------------------------------------------------- the checks can fail


def _reply(status: int, body: Any, ctype: str = "application/json") -> Reply:
    headers = http.client.HTTPMessage()
    headers["Content-Type"] = ctype
    return Reply(status, headers, body if isinstance(body, bytes) else json.dumps(body).encode())


def test_the_contract_catches_mismatches(contract: Contract, run: Run) -> None:
    progress = next(frame for frame in run.frames if frame["type"] == "progress")
    data = progress["data"]
    assert contract.frame_errors(progress) == []
    assert contract.frame_errors({**progress, "data": {**data, "value": "1"}})
    assert contract.frame_errors({**progress, "data": {k: v for k, v in data.items() if k != "prompt_id"}})
    assert contract.frame_errors({**progress, "data": {**data, "surprise": 1}})
    assert contract.frame_errors({"type": "no_such_message", "data": {}})
    stats = _reply(200, {"system": {}, "devices": []})
    assert contract.reply_errors("/system_stats", "get", stats)
    assert contract.reply_errors("/queue", "post", _reply(200, {}))  # a body where none is documented
    assert contract.reply_errors("/prompt", "get", _reply(418, {}))  # an undocumented status
    assert contract.reply_errors("/prompt", "get", _reply(200, b"<p>", "text/html"))
    assert contract.reply_errors("/prompt", "post", _reply(400, {"error": "flat string"}))
