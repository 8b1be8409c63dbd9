"""ComfyUI custom node packs written the way packs are written (tests/custom_nodes/packs/) load into a real Loom
server on loopback and run: V1 declarations, lists, lazy inputs, expansion, hidden inputs, UI results, IS_CHANGED,
VALIDATE_INPUTS, ComfyUI's modules (folder_paths, comfy.utils, comfy.model_management, nodes, server), a custom
route, a frontend extension, a failing pack and a single-file pack."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.custom_nodes.packs import find_packs, load_packs
from engine.folders import Folders
from engine.registry import NodeRegistry
from tests.api.conftest import LiveServer, collect_until_done, run_collecting, start_live_server

PACKS = Path(__file__).parent / "packs"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("loom-packs")
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / "a.safetensors").write_bytes(b"")
    folders = Folders(root / "input", root / "output", root / "temp", (root / "models",))

    def packs(registry: NodeRegistry) -> None:
        load_packs([PACKS], registry, folders)

    server = start_live_server(root, extra_nodes=packs)
    yield server
    server.stop()


def run(live: LiveServer, prompt: dict[str, Any]) -> dict[str, Any]:
    prompt_id = live.queue_prompt(prompt)
    entry = live.wait_history(prompt_id, timeout=60)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def test_packs_are_found_in_order_skipping_disabled_ones(tmp_path: Path) -> None:
    for name in ("b_pack", "a_pack", "c.disabled", ".hidden", "__pycache__"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "z_single.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "no_init").mkdir()
    assert [p.name for p in find_packs([tmp_path, tmp_path / "missing"])] == ["a_pack", "b_pack", "z_single.py"]


def test_reports_say_what_loaded_and_what_failed(live: LiveServer) -> None:
    reports = {r["name"]: r for r in live.get("/loom/custom_nodes").json()}
    assert set(reports) == {"loom_test_v1_pack", "loom_test_broken_pack", "loom_test_single_file"}
    good = reports["loom_test_v1_pack"]
    assert good["status"] == "loaded" and good["error"] == "" and len(good["nodes"]) == 12
    assert "already registered" in good["skipped"]["KSampler"] and good["load_time"] >= 0
    broken = reports["loom_test_broken_pack"]
    assert broken["status"] == "failed" and broken["nodes"] == []
    assert "comfy.controlnet" in broken["error"] and "Loom does not provide" in broken["error"]
    assert reports["loom_test_single_file"]["nodes"] == ["LoomTestGreeting"]


def test_object_info_shows_pack_nodes_as_comfyui_does(live: LiveServer) -> None:
    info = live.get("/object_info").json()
    times = info["LoomTestImageTimes"]
    assert times["python_module"] == "custom_nodes.loom_test_v1_pack"
    assert times["display_name"] == "Image × Factor (test pack)" and times["category"] == "loom test/image"
    assert times["description"] == "Multiplies an image by a factor."
    assert times["input"]["required"]["factor"] == ["FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.01}]
    assert times["output"] == ["IMAGE", "INT"] and times["output_name"] == ["image", "width"]
    assert info["LoomTestCountTo"]["output_is_list"] == [True]
    assert info["LoomTestLazySwitch"]["input"]["required"]["on_true"][1] == {"forceInput": True, "lazy": True}
    assert info["LoomTestCheckedValue"]["input"]["required"]["ckpt"][0] == ["a.safetensors"]
    assert info["LoomTestShowInfo"]["output_node"] is True
    assert info["KSampler"]["python_module"] == "nodes"  # Loom's own, not the pack's


def test_image_nodes_core_nodes_and_a_previewimage_subclass_run(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0xFFFFFF}},
        "2": {"class_type": "LoomTestImageTimes", "inputs": {"image": ["1", 0], "factor": 0.5, "limit": 64}},
        "3": {"class_type": "LoomTestInvertWithCore", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "LoomTestPreviewTinted", "inputs": {"images": ["3", 0], "tint": "red"}},
        "5": {"class_type": "LoomTestShowInfo", "inputs": {"value": ["2", 1]}},
    }
    entry = run(live, prompt)
    [image] = entry["outputs"]["4"]["images"]
    assert image["type"] == "temp" and image["filename"].startswith("tinted_temp_")
    from PIL import Image
    with Image.open(live.settings.temp_dir / image["subfolder"] / image["filename"]) as picture:
        assert picture.size == (16, 8) and picture.getpixel((0, 0)) == (255, 127, 127)  # 1 - 0.5, red set to 1
        assert json.loads(picture.info["prompt"])["4"]["class_type"] == "LoomTestPreviewTinted"
    assert entry["outputs"]["5"]["text"] == ["value=16 node=5 class=LoomTestShowInfo nodes=5"]


def test_lists_lazy_inputs_and_expansion_run(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "LoomTestCountTo", "inputs": {"n": 4}},
        "2": {"class_type": "LoomTestSumList", "inputs": {"values": ["1", 0], "bonus": 10}},
        "3": {"class_type": "LoomTestShowInfo", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "LoomTestCountdown", "inputs": {"steps": 2, "delay": 0.0}},
        "6": {"class_type": "LoomTestLazySwitch", "inputs": {"which": True, "on_true": ["4", 0], "on_false": ["7", 0]}},
        "7": {"class_type": "LoomTestCountdown", "inputs": {"steps": 99, "delay": 0.0}},
        "8": {"class_type": "LoomTestShowInfo", "inputs": {"value": ["6", 0]}},
        "9": {"class_type": "LoomTestExpand", "inputs": {"size": 4}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
    }
    prompt_id, messages = run_collecting(live, prompt)
    assert "execution_success" in [m["type"] for m in messages]
    entry = live.wait_history(prompt_id)
    assert entry["outputs"]["3"]["text"] == ["value=16 node=3 class=LoomTestShowInfo nodes=9"]  # 0+1+2+3 + 10
    assert entry["outputs"]["8"]["text"][0].startswith("value=2 ")
    progress = [(m["data"]["value"], m["data"]["max"]) for m in messages
                if m["type"] == "progress" and m["data"]["node"] == "4"]
    assert progress == [(1, 2), (2, 2)]
    ran = {m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]}
    assert "7" not in ran  # the lazy input not taken never ran
    [preview] = entry["outputs"]["10"]["images"]
    assert preview["type"] == "temp"


def test_interrupting_a_pack_node_stops_it(live: LiveServer) -> None:
    prompt = {"1": {"class_type": "LoomTestCountdown", "inputs": {"steps": 100000, "delay": 0.01}},
              "2": {"class_type": "LoomTestShowInfo", "inputs": {"value": ["1", 0]}}}
    client = uuid.uuid4().hex
    ws = live.ws(client)
    try:
        prompt_id = live.queue_prompt(prompt, client_id=client)
        while True:
            message = json.loads(ws.recv())
            if message["type"] == "progress":
                break
        assert live.post("/interrupt", {}).status == 200
        messages = collect_until_done(ws, prompt_id)
    finally:
        ws.close()
    assert "execution_interrupted" in [m["type"] for m in messages]


def test_is_changed_and_validate_inputs(live: LiveServer) -> None:
    prompt = {"1": {"class_type": "LoomTestAlwaysNew", "inputs": {"seed": 1}},
              "2": {"class_type": "LoomTestShowInfo", "inputs": {"value": ["1", 0]}}}
    first = run(live, prompt)["outputs"]["2"]["text"]
    second = run(live, prompt)["outputs"]["2"]["text"]
    assert first != second  # IS_CHANGED returned NaN: never cached
    checked = {"1": {"class_type": "LoomTestCheckedValue", "inputs": {"name": "fine", "ckpt": "a.safetensors"}}}
    assert run(live, checked)["outputs"]["1"]["text"] == ["fine:a.safetensors"]
    checked["1"]["inputs"]["name"] = "bad"
    bad = live.post("/prompt", {"prompt": checked})
    assert bad.status == 400 and "name must not be 'bad'" in bad.body.decode()
    checked["1"]["inputs"].update(name="fine", ckpt="missing.safetensors")
    assert live.post("/prompt", {"prompt": checked}).status == 400  # the combo's own check still applies


def test_a_custom_route_and_its_websocket_message(live: LiveServer) -> None:
    ws = live.ws(uuid.uuid4().hex)
    try:
        json.loads(ws.recv())  # status
        reply = live.get("/loom_test/hello?who=loom")
        assert reply.status == 200 and reply.json() == {"hello": "loom"}
        message = json.loads(ws.recv())
        assert message == {"type": "loom_test.hello", "data": {"who": "loom"}}
    finally:
        ws.close()
    foreign = live.get("/loom_test/hello", headers={"Origin": "http://evil.example"})
    assert foreign.status == 403  # the packs' routes sit behind the same checks as Loom's


def test_prompt_server_names_the_prompts_client_and_node(live: LiveServer) -> None:
    client = uuid.uuid4().hex
    entry = live.wait_history(live.queue_prompt({"7": {"class_type": "LoomTestWhoAsked", "inputs": {}}},
                                                client_id=client))
    assert entry["outputs"]["7"]["text"] == [f"{client}/7"]


def test_the_frontend_extension_is_listed_and_served(live: LiveServer) -> None:
    assert live.get("/extensions").json() == ["/extensions/loom_test_v1_pack/loom_test.js"]
    script = live.get("/extensions/loom_test_v1_pack/loom_test.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert b"registerExtension" in script.body
    for path in ("/extensions/loom_test_v1_pack/../__init__.py", "/extensions/loom_test_v1_pack/missing.js",
                 "/extensions/nope/loom_test.js"):
        assert live.get(path).status == 404, path


def test_a_single_file_pack_runs(live: LiveServer) -> None:
    entry = run(live, {"1": {"class_type": "LoomTestGreeting", "inputs": {"name": "loom"}}})
    assert entry["outputs"]["1"]["text"] == ["hello loom"]
    info = live.get("/object_info/LoomTestGreeting").json()["LoomTestGreeting"]
    assert info["python_module"] == "custom_nodes.loom_test_single_file"
