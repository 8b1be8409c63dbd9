"""ComfyUI V3 custom node packs written the way V3 packs are written (tests/custom_nodes/packs_v3/) load into a real
Loom server on loopback and run: comfy_entrypoint / ComfyExtension, io.Schema declarations, widgets' options, lazy
inputs, async execute, hidden values, ui.PreviewText / ui.PreviewImage, output lists, validate_inputs,
fingerprint_inputs, and a pack whose get_node_list fails."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.custom_nodes.packs import load_packs
from engine.custom_nodes.v3 import wait_for
from engine.folders import Folders
from engine.registry import NodeRegistry
from tests.api.conftest import LiveServer, run_collecting, start_live_server

PACKS = Path(__file__).parent / "packs_v3"
PACK_MODULES = ("loom_test_v3_pack", "loom_test_v3_broken")


def _pack_module(name: str) -> bool:
    return any(name == pack or name.startswith(pack + ".") for pack in PACK_MODULES)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("loom-v3-packs")
    folders = Folders(root / "input", root / "output", root / "temp", (root / "models",))

    def packs(registry: NodeRegistry) -> None:
        load_packs([PACKS], registry, folders)

    server = start_live_server(root, extra_nodes=packs)
    yield server
    server.stop()
    for name in [name for name in sys.modules if _pack_module(name)]:
        sys.modules.pop(name)


def run(live: LiveServer, prompt: dict[str, Any]) -> dict[str, Any]:
    prompt_id = live.queue_prompt(prompt)
    entry = live.wait_history(prompt_id, timeout=60)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def test_reports_name_the_v3_nodes_and_the_failures(live: LiveServer) -> None:
    reports = {r["name"]: r for r in live.get("/loom/custom_nodes").json()}
    assert set(reports) == set(PACK_MODULES)
    good = reports["loom_test_v3_pack"]
    assert good["status"] == "loaded" and good["error"] == ""
    assert good["nodes"] == ["LoomV3Widgets", "LoomV3ShowText", "LoomV3LazyPick", "LoomV3ImageScale",
                             "LoomV3PreviewScaled", "LoomV3AsyncAdd", "LoomV3CountTo", "LoomV3Checked"]
    assert "this schema is broken on purpose" in good["skipped"]["BadSchema"]
    broken = reports["loom_test_v3_broken"]
    assert broken["status"] == "failed" and broken["nodes"] == []
    assert broken["error"] == "RuntimeError: no nodes today"


def test_object_info_shows_v3_nodes_as_comfyui_does(live: LiveServer) -> None:
    info = live.get("/object_info").json()
    widgets = info["LoomV3Widgets"]
    assert widgets["python_module"] == "custom_nodes.loom_test_v3_pack"
    assert widgets["display_name"] == "Widgets (V3 test pack)" and widgets["category"] == "loom test v3/widgets"
    assert widgets["description"] == "Joins its widget values into a text."
    required = widgets["input"]["required"]
    assert required["count"] == ["INT", {"default": 2, "min": 0, "max": 10, "step": 1,
                                         "control_after_generate": True, "display": "slider"}]
    assert required["scale"] == ["FLOAT", {"default": 0.5, "min": 0.0, "max": 2.0, "step": 0.25, "round": 0.01,
                                           "tooltip": "a factor"}]
    assert required["word"] == ["STRING", {"default": "loom", "multiline": False, "placeholder": "a word"}]
    assert required["shout"] == ["BOOLEAN", {"default": False, "label_on": "LOUD", "label_off": "quiet"}]
    assert required["joiner"] == [["-", "+", "_"], {"default": "+"}]
    assert widgets["input"]["optional"]["suffix"] == ["STRING", {"default": "!", "multiline": False}]
    assert widgets["output"] == ["STRING"] and widgets["output_name"] == ["text"]
    assert widgets["output_tooltips"] == ["the joined text"] and widgets["output_node"] is False
    scale = info["LoomV3ImageScale"]
    assert scale["input"]["required"]["image"] == ["IMAGE", {}]
    assert scale["output"] == ["IMAGE", "INT"] and scale["output_name"] == ["image", "width"]
    assert info["LoomV3CountTo"]["output_is_list"] == [True]
    assert info["LoomV3LazyPick"]["input"]["required"]["on_true"][1] == {"forceInput": True, "lazy": True}
    assert info["LoomV3LazyPick"]["output_name"] == ["INT"]  # an output without an id is named by its type
    assert info["LoomV3ShowText"]["output_node"] is True and info["LoomV3ShowText"]["output"] == []


def test_widgets_optional_input_and_preview_text_run(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "LoomV3Widgets",
              "inputs": {"count": 3, "scale": 0.5, "word": "ab", "shout": True, "joiner": "-"}},
        "2": {"class_type": "LoomV3ShowText", "inputs": {"text": ["1", 0]}},
        "3": {"class_type": "LoomV3Widgets",
              "inputs": {"count": 1, "scale": 2.0, "word": "x", "shout": False, "joiner": "_", "suffix": "?"}},
        "4": {"class_type": "LoomV3ShowText", "inputs": {"text": ["3", 0]}},
    }
    outputs = run(live, prompt)["outputs"]
    assert outputs["2"]["text"] == ["AB-AB-AB-1.5"]  # the optional suffix not given: execute's default
    assert outputs["4"]["text"] == ["x_2?"]


def test_image_math_and_preview_image(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0xFFFFFF}},
        "2": {"class_type": "LoomV3ImageScale", "inputs": {"image": ["1", 0], "factor": 0.5}},
        "3": {"class_type": "LoomV3PreviewScaled", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "LoomV3AsyncAdd", "inputs": {"a": ["2", 1], "b": 1}},
        "5": {"class_type": "LoomV3ShowText", "inputs": {"text": ["4", 1]}},
    }
    entry = run(live, prompt)
    [image] = entry["outputs"]["3"]["images"]
    assert image["type"] == "temp" and image["filename"].startswith("ComfyUI_temp_")
    assert entry["outputs"]["3"]["animated"] == [False]
    from PIL import Image
    with Image.open(live.settings.temp_dir / image["subfolder"] / image["filename"]) as picture:
        assert picture.size == (16, 8) and picture.getpixel((0, 0)) == (127, 127, 127)
        assert json.loads(picture.info["prompt"])["3"]["class_type"] == "LoomV3PreviewScaled"
    assert entry["outputs"]["5"]["text"] == ["node=4 sum=17"]  # width 16 + 1, from an async execute


def test_output_lists_async_execute_and_hidden_unique_id(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "LoomV3CountTo", "inputs": {"n": 3}},
        "7": {"class_type": "LoomV3AsyncAdd", "inputs": {"a": ["1", 0], "b": 10}},
        "8": {"class_type": "LoomV3ShowText", "inputs": {"text": ["7", 1]}},
    }
    outputs = run(live, prompt)["outputs"]
    assert outputs["8"]["text"] == ["node=7 sum=10", "node=7 sum=11", "node=7 sum=12"]


def test_lazy_inputs_run_only_when_asked_for(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "LoomV3AsyncAdd", "inputs": {"a": 1, "b": 2}},
        "2": {"class_type": "LoomV3AsyncAdd", "inputs": {"a": 100, "b": 200}},
        "3": {"class_type": "LoomV3LazyPick", "inputs": {"which": False, "on_true": ["1", 0], "on_false": ["2", 0]}},
        "4": {"class_type": "LoomV3AsyncAdd", "inputs": {"a": ["3", 0], "b": 0}},
        "5": {"class_type": "LoomV3ShowText", "inputs": {"text": ["4", 1]}},
    }
    prompt_id, messages = run_collecting(live, prompt)
    assert "execution_success" in [m["type"] for m in messages]
    assert live.wait_history(prompt_id)["outputs"]["5"]["text"] == ["node=4 sum=300"]
    ran = {m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]}
    assert {"2", "3", "4", "5"} <= ran and "1" not in ran  # the lazy input not taken never ran


def test_validate_inputs_and_fingerprint_inputs(live: LiveServer) -> None:
    prompt = {"1": {"class_type": "LoomV3Checked", "inputs": {"name": "fine"}},
              "2": {"class_type": "LoomV3ShowText", "inputs": {"text": ["1", 0]}}}
    first = run(live, prompt)["outputs"]["2"]["text"]
    second = run(live, prompt)["outputs"]["2"]["text"]
    assert first[0].startswith("fine:") and first != second  # fingerprint_inputs said NaN: never cached
    prompt["1"]["inputs"]["name"] = "bad"
    bad = live.post("/prompt", {"prompt": prompt})
    assert bad.status == 400 and "name must not be 'bad'" in bad.body.decode()


def test_wait_for_awaits_from_plain_code_and_from_inside_a_loop() -> None:
    async def seven() -> int:
        await asyncio.sleep(0)
        return 7

    assert wait_for(seven()) == 7
    assert wait_for(3) == 3

    async def inside() -> int:
        return int(wait_for(seven()))

    assert asyncio.run(inside()) == 7


def test_a_module_without_an_entrypoint_has_no_v3_nodes() -> None:
    from engine.custom_nodes.v3 import extension_nodes
    assert extension_nodes(ModuleType("plain")) is None


def test_declarations_types_schema_checks_and_hidden_defaults() -> None:
    from engine.custom_nodes.compat.comfy_api.latest import io, ui

    box = io.Custom("LOOM_BOX")
    assert box.Input("b").get_io_type() == "LOOM_BOX" and box.Output().io_type == "LOOM_BOX"
    assert io.AnyType.Input("x").io_type == "*" and io.Combo.Output(options=["a"]).io_type == "COMBO"

    @io.comfytype(io_type="LOOM_PAIR")
    class Pair(io.ComfyTypeIO):
        Type = tuple

    assert Pair.Input("p", optional=True).as_dict() == {"optional": True} and Pair.Input("p").io_type == "LOOM_PAIR"
    assert isinstance(io.Int.Input("n"), io.WidgetInput) and io.Int.Input("n").io_type == "INT"

    class Twice(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(node_id="Twice", inputs=[io.Int.Input("n"), io.Float.Input("n")])

    with pytest.raises(ValueError, match="Input ids must be unique"):
        Twice.GET_SCHEMA()
    holder = io.HiddenHolder(unique_id="5")
    assert holder.unique_id == "5" and holder.prompt is None and holder.auth_token_comfy_org is None
    assert ui.PreviewText("hi").as_dict() == {"text": ["hi"]}
    with pytest.raises(AttributeError, match="Autogrow"):
        _ = io.Autogrow
