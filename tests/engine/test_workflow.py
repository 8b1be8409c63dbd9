from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.errors import UnknownNode, ValidationFailed
from engine.folders import Folders
from engine.registry import NodeRegistry
from engine.validate import validate_prompt
from engine.workflow import is_link, is_ui_workflow, parse_api_prompt, ui_to_api
from tests.support.stub_nodes import StubWorld, registry_with_stubs


def _node(node_id: int, kind: str, *, inputs: list[dict[str, Any]] | None = None,
          outputs: list[dict[str, Any]] | None = None, widgets: Any = None, mode: int = 0) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {},
                            "order": node_id, "mode": mode, "inputs": inputs or [], "outputs": outputs or [],
                            "properties": {"Node name for S&R": kind}}
    if widgets is not None:
        node["widgets_values"] = widgets
    return node


def editor_workflow() -> dict[str, Any]:
    """StubInt -> Reroute -> StubAdd(b from a PrimitiveNode) -> [bypassed StubFail] -> StubShow,
    plus a muted StubShow and a Note."""
    nodes = [
        _node(1, "StubInt", outputs=[{"name": "INT", "type": "INT", "links": [1]}], widgets=[5]),
        _node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}],
              outputs=[{"name": "", "type": "INT", "links": [2]}]),
        _node(3, "StubAdd", inputs=[{"name": "a", "type": "INT", "link": 2},
                                    {"name": "b", "type": "INT", "link": 3, "widget": {"name": "b"}}],
              outputs=[{"name": "sum", "type": "INT", "links": [4]}], widgets=[1]),
        _node(4, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [3],
                                            "widget": {"name": "b"}}], widgets=[40, "fixed"]),
        _node(5, "StubFail", inputs=[{"name": "a", "type": "INT", "link": 4}],
              outputs=[{"name": "INT", "type": "INT", "links": [5]}], widgets=[True], mode=4),
        _node(6, "StubShow", inputs=[{"name": "value", "type": "*", "link": 5}]),
        _node(7, "StubShow", inputs=[{"name": "value", "type": "*", "link": 6}], mode=2),
        _node(8, "Note", widgets=["remember the milk"]),
        _node(9, "StubOptions", outputs=[{"name": "STRING", "type": "STRING", "links": [6]}],
              widgets=[True, 0.25, "hello", "slow", 1234, "randomize", 3]),
    ]
    links = [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"], [3, 4, 0, 3, 1, "INT"],
             [4, 3, 0, 5, 0, "INT"], [5, 5, 0, 6, 0, "INT"], [6, 9, 0, 7, 0, "STRING"]]
    return {"last_node_id": 9, "last_link_id": 6, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def test_editor_to_api(world: StubWorld) -> None:
    workflow = editor_workflow()
    assert is_ui_workflow(workflow)
    api = ui_to_api(workflow, world.registry)
    assert sorted(api) == ["1", "3", "6", "9"]  # reroute, primitive, bypassed, muted, note gone
    assert api["1"]["inputs"] == {"value": 5}
    assert api["3"]["inputs"] == {"a": ["1", 0], "b": 40}  # through the reroute; primitive's value
    assert api["6"]["inputs"] == {"value": ["3", 0]}  # bypassed StubFail passed through
    assert api["9"]["inputs"] == {"flag": True, "ratio": 0.25, "text": "hello", "mode": "slow", "seed": 1234,
                                 "extra": 3}
    assert api["3"]["_meta"]["title"] == "StubAdd"


def test_links_as_objects_v1(world: StubWorld) -> None:
    workflow = editor_workflow()
    workflow["links"] = [dict(zip(["id", "origin_id", "origin_slot", "target_id", "target_slot", "type"],
                                  link, strict=True)) for link in workflow["links"]]
    assert ui_to_api(workflow, world.registry)["3"]["inputs"]["a"] == ["1", 0]


def test_unknown_editor_node(world: StubWorld) -> None:
    workflow = editor_workflow()
    workflow["nodes"].append(_node(10, "MysteryNode"))
    with pytest.raises(ValidationFailed) as caught:
        ui_to_api(workflow, world.registry)
    [err] = caught.value.errors
    assert isinstance(err, UnknownNode) and err.node_id == "10"


def test_list_widget_values_are_wrapped(world: StubWorld) -> None:
    workflow = {"nodes": [_node(1, "StubOptions", widgets=[False, 0.5, ["a", 1], "fast", 0, "fixed"])],
                "links": []}
    assert ui_to_api(workflow, world.registry)["1"]["inputs"]["text"] == {"__value__": ["a", 1]}


def test_is_link_rules() -> None:
    assert is_link(["3", 0])
    assert not is_link(["3", "0"]) and not is_link([3, 0]) and not is_link(["3", True])
    assert not is_link(["3", 0, 1])


def test_parse_api_prompt_normalises_ids() -> None:
    prompt = parse_api_prompt({1: {"class_type": "X", "inputs": {"a": 1}, "_meta": {"title": "t"}}})
    assert prompt == {"1": {"class_type": "X", "inputs": {"a": 1}, "_meta": {"title": "t"}}}


# ---------------------------------------------------------------- workflows and prompts as ComfyUI writes them


def comfy_default_workflow() -> dict[str, Any]:
    """ComfyUI's default workflow (ComfyUI_frontend src/scripts/defaultGraph.ts): VAEDecode and SaveImage are
    saved without ``widgets_values``, KSampler's control value is the legacy ``true``."""
    def n(node_id: int, kind: str, inputs: list[tuple[str, str, int]], outputs: list[tuple[str, str, list[int]]],
          widgets: list[Any] | None) -> dict[str, Any]:
        saved: dict[str, Any] = {"id": node_id, "type": kind, "pos": [0, 0], "size": [315, 100], "flags": {},
                                 "order": 0, "mode": 0, "properties": {},
                                 "outputs": [{"name": name, "type": t, "links": links, "slot_index": i}
                                             for i, (name, t, links) in enumerate(outputs)]}
        if inputs:
            saved["inputs"] = [{"name": name, "type": t, "link": lk} for name, t, lk in inputs]
        if widgets is not None:
            saved["widgets_values"] = widgets
        return saved

    nodes = [
        n(7, "CLIPTextEncode", [("clip", "CLIP", 5)], [("CONDITIONING", "CONDITIONING", [6])], ["text, watermark"]),
        n(6, "CLIPTextEncode", [("clip", "CLIP", 3)], [("CONDITIONING", "CONDITIONING", [4])],
          ["beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"]),
        n(5, "EmptyLatentImage", [], [("LATENT", "LATENT", [2])], [512, 512, 1]),
        n(3, "KSampler", [("model", "MODEL", 1), ("positive", "CONDITIONING", 4), ("negative", "CONDITIONING", 6),
                          ("latent_image", "LATENT", 2)], [("LATENT", "LATENT", [7])],
          [156680208700286, True, 20, 8, "euler", "normal", 1]),
        n(8, "VAEDecode", [("samples", "LATENT", 7), ("vae", "VAE", 8)], [("IMAGE", "IMAGE", [9])], None),
        n(9, "SaveImage", [("images", "IMAGE", 9)], [], None),
        n(4, "CheckpointLoaderSimple", [], [("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [3, 5]), ("VAE", "VAE", [8])],
          ["v1-5-pruned-emaonly.ckpt"]),
    ]
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
             [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
             [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]]
    return {"last_node_id": 9, "last_link_id": 9, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {}, "version": 0.4}


@pytest.fixture(scope="module")
def builtin() -> NodeRegistry:
    return registry_with_stubs()


@pytest.fixture
def model_folders(tmp_path: Path) -> Folders:
    """Folders whose checkpoints folder lists ComfyUI's default checkpoint (an empty file: nothing loads it)."""
    folders = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp", (tmp_path / "models",))
    folders.ensure()
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "v1-5-pruned-emaonly.ckpt").write_bytes(b"")
    return folders


def test_comfyui_default_workflow_converts_and_validates(builtin: NodeRegistry, model_folders: Folders) -> None:
    api = ui_to_api(comfy_default_workflow(), builtin)
    save = builtin.get("SaveImage")
    assert save is not None
    prefix = save.input_named("filename_prefix")
    assert prefix is not None
    # SaveImage saved without widgets_values takes the declared default (ComfyUI's is "ComfyUI"; ours is the
    # one SaveImage declares).
    assert api["9"]["inputs"] == {"images": ["8", 0], "filename_prefix": prefix.default}
    assert api["3"]["inputs"]["seed"] == 156680208700286 and api["3"]["inputs"]["sampler_name"] == "euler"
    validated = validate_prompt(api, builtin, model_folders)
    assert validated.outputs == ["9"] and not validated.warnings
    assert sorted(validated.nodes, key=int) == ["3", "4", "5", "6", "7", "8", "9"]


def test_missing_widget_values_take_the_declared_defaults(world: StubWorld) -> None:
    workflow = {"nodes": [_node(1, "StubOptions"), _node(2, "StubInt", widgets=[])], "links": []}
    api = ui_to_api(workflow, world.registry)
    # A combo without a declared default starts at its first choice, as the editor's combo does.
    assert api["1"]["inputs"] == {"flag": False, "ratio": 0.5, "text": "", "mode": "fast", "seed": 0, "extra": 3}
    assert api["2"]["inputs"] == {"value": 0}


def test_subgraph_shaped_like_comfyuis_templates(builtin: NodeRegistry, model_folders: Folders) -> None:
    """As templates/01_qwen_t2i_subgraphed.json: the pipeline in a subgraph whose instance saves no inputs
    (all promoted widgets, unlinked), names them in properties.proxyWidgets and keeps their values."""
    def slot(name: str, kind: str, lk: int | None, widget: bool = False) -> dict[str, Any]:
        return {"localized_name": name, "name": name, "type": kind, "link": lk} | (
            {"widget": {"name": name}} if widget else {})

    def sg_node(node_id: int, kind: str, inputs: list[dict[str, Any]], outputs: list[tuple[str, list[int]]],
                widgets: list[Any], title: str | None = None) -> dict[str, Any]:
        saved = _node(node_id, kind, inputs=inputs, outputs=[{"localized_name": t, "name": t, "type": t,
                                                              "links": links} for t, links in outputs],
                      widgets=widgets)
        return saved | ({"title": title} if title else {})

    def lk(link_id: int, origin: int, oslot: int, target: int, tslot: int, kind: str) -> dict[str, Any]:
        return {"id": link_id, "origin_id": origin, "origin_slot": oslot, "target_id": target,
                "target_slot": tslot, "type": kind}

    promoted = [("ckpt_name", "COMBO", 4, 0), ("width", "INT", 5, 0), ("seed", "INT", 3, 4),
                ("steps", "INT", 3, 5), ("text", "STRING", 6, 1)]
    links = [lk(100 + i, -10, i, target, tslot, kind) for i, (_, kind, target, tslot) in enumerate(promoted)]
    links += [lk(1, 4, 0, 3, 0, "MODEL"), lk(2, 5, 0, 3, 3, "LATENT"), lk(3, 4, 1, 6, 0, "CLIP"),
              lk(4, 6, 0, 3, 1, "CONDITIONING"), lk(5, 4, 1, 7, 0, "CLIP"), lk(6, 7, 0, 3, 2, "CONDITIONING"),
              lk(7, 3, 0, 8, 0, "LATENT"), lk(8, 4, 2, 8, 1, "VAE"), lk(9, 8, 0, -20, 0, "IMAGE")]
    nodes = [
        sg_node(4, "CheckpointLoaderSimple", [slot("ckpt_name", "COMBO", 100, True)],
                [("MODEL", [1]), ("CLIP", [3, 5]), ("VAE", [8])], ["v1-5-pruned-emaonly.ckpt"]),
        sg_node(5, "EmptyLatentImage", [slot("width", "INT", 101, True)], [("LATENT", [2])], [512, 512, 1]),
        sg_node(6, "CLIPTextEncode", [slot("clip", "CLIP", 3), slot("text", "STRING", 104, True)],
                [("CONDITIONING", [4])], ["inner text"], "CLIP Text Encode (Positive Prompt)"),
        sg_node(7, "CLIPTextEncode", [slot("clip", "CLIP", 5)], [("CONDITIONING", [6])], [""]),
        sg_node(3, "KSampler", [slot("model", "MODEL", 1), slot("positive", "CONDITIONING", 4),
                                slot("negative", "CONDITIONING", 6), slot("latent_image", "LATENT", 2),
                                slot("seed", "INT", 102, True), slot("steps", "INT", 103, True)],
                [("LATENT", [7])], [1, "randomize", 20, 8, "euler", "normal", 1]),
        sg_node(8, "VAEDecode", [slot("samples", "LATENT", 7), slot("vae", "VAE", 8)], [("IMAGE", [9])], []),
    ]
    sub_id = "2c61139d-9c34-4c7e-a083-7a67cc4770ad"
    definition = {
        "id": sub_id, "version": 1, "state": {"lastGroupId": 0, "lastNodeId": 8, "lastLinkId": 104,
                                              "lastRerouteId": 0},
        "revision": 0, "config": {}, "name": "Text to image (Simplified)",
        "inputNode": {"id": -10, "bounding": [-720, 370, 120, 220]},
        "outputNode": {"id": -20, "bounding": [1440, 360, 120, 60]},
        "inputs": [{"id": f"00000000-0000-4000-8000-00000000000{i}", "name": name, "type": kind,
                    "linkIds": [100 + i], "pos": [0, 0]} for i, (name, kind, _, _) in enumerate(promoted)],
        "outputs": [{"id": "00000000-0000-4000-8000-0000000000ff", "name": "IMAGE", "type": "IMAGE",
                     "linkIds": [9], "localized_name": "IMAGE", "pos": [0, 0]}],
        "widgets": [], "nodes": nodes, "groups": [], "links": links, "extra": {},
    }
    instance = _node(75, sub_id, outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [133]}],
                     widgets=["v1-5-pruned-emaonly.ckpt", 768, 1125488487853216, 4, "a billboard in the city"])
    instance["title"] = "Text to image (Simplified)"
    instance["properties"] = {"proxyWidgets": [["-1", name] for name, _, _, _ in promoted],
                              "cnr_id": "comfy-core", "ver": "0.3.62"}
    save = _node(60, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 133}], widgets=["Qwen_t2i"])
    workflow = {"id": "91f6bbe2-ed41-4fd6-bac7-71d5b5864ecb", "revision": 2, "last_node_id": 82,
                "last_link_id": 133, "nodes": [save, _node(82, "MarkdownNote", widgets=["notes"]), instance],
                "links": [[133, 75, 0, 60, 0, "IMAGE"]], "groups": [], "definitions": {"subgraphs": [definition]},
                "config": {}, "extra": {"frontendVersion": "1.32.1"}, "version": 0.4}
    api = ui_to_api(workflow, builtin)
    assert sorted(api) == ["60", "75:3", "75:4", "75:5", "75:6", "75:7", "75:8"]
    assert api["75:4"]["inputs"] == {"ckpt_name": "v1-5-pruned-emaonly.ckpt"}
    assert api["75:5"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}
    assert api["75:6"]["inputs"] == {"text": "a billboard in the city", "clip": ["75:4", 1]}
    assert api["75:6"]["_meta"] == {"title": "CLIP Text Encode (Positive Prompt)"}
    sampler = api["75:3"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["model"]) == (1125488487853216, 4, 8,
                                                                                     ["75:4", 0])
    assert api["60"]["inputs"] == {"images": ["75:8", 0], "filename_prefix": "Qwen_t2i"}
    validated = validate_prompt(api, builtin, model_folders)
    assert validated.outputs == ["60"] and len(validated.nodes) == 7


def test_int_id_links_are_normalised_when_parsed(world: StubWorld, folders: Folders) -> None:
    prompt = {"1": {"class_type": "StubInt", "inputs": {"value": 2}},
              "2": {"class_type": "StubAdd", "inputs": {"a": [1, 0], "b": 3}},
              "3": {"class_type": "StubShow", "inputs": {"value": [2, 0]}}}
    parsed = parse_api_prompt(prompt)
    assert parsed["2"]["inputs"]["a"] == ["1", 0] and parsed["3"]["inputs"]["value"] == ["2", 0]
    assert prompt["2"]["inputs"]["a"] == [1, 0]  # the caller's prompt is not changed
    validated = validate_prompt(prompt, world.registry, folders)
    assert validated.nodes["2"].links == {"a": ("1", 0)} and validated.nodes["3"].links == {"value": ("2", 0)}
    # Not links: an id of no node, a bool, a non-integer slot.
    odd = {"x": [9, 0], "y": [True, 0], "z": [1, "0"], "w": ["1", 0]}
    assert parse_api_prompt({"1": {"class_type": "StubShow", "inputs": odd}})["1"]["inputs"] == {
        "x": [9, 0], "y": [True, 0], "z": [1, "0"], "w": ["1", 0]}


def test_missing_input_with_a_default_takes_it_with_a_warning(world: StubWorld, folders: Folders) -> None:
    prompt = {"1": {"class_type": "StubInt", "inputs": {"value": 2}},
              "2": {"class_type": "StubAdd", "inputs": {"a": ["1", 0]}},  # b (default 1) left out
              "3": {"class_type": "StubShow", "inputs": {"value": ["2", 0]}}}
    validated = validate_prompt(prompt, world.registry, folders)
    assert validated.nodes["2"].literals == {"b": 1}
    [warning] = validated.warnings
    assert warning["node_id"] == "2" and warning["class_type"] == "StubAdd" and warning["input_name"] == "b"
    assert "default 1" in warning["message"]
    # A socket input, or a widget without a default (a combo), is still required.
    for node, name in (({"class_type": "StubAdd", "inputs": {"b": 1}}, "a"),
                       ({"class_type": "StubOptions", "inputs": {"seed": 1}}, "mode")):
        with pytest.raises(ValidationFailed) as caught:
            validate_prompt({"2": node, "3": {"class_type": "StubShow", "inputs": {"value": ["2", 0]}}},
                            world.registry, folders)
        assert [(e.kind, e.input_name) for e in caught.value.errors] == [("required_input_missing", name)]


def test_old_inpaint_prompt_without_grow_mask_by(builtin: NodeRegistry, model_folders: Folders) -> None:
    """VAEEncodeForInpaint's grow_mask_by came after the first inpainting prompts were written."""
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.ckpt"}},
              "10": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "11": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
              "12": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["10", 0], "vae": ["4", 2],
                                                                     "mask": ["11", 0]}},
              "13": {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "x"}}}
    validated = validate_prompt(prompt, builtin, model_folders)
    assert validated.nodes["12"].literals == {"grow_mask_by": 6}
    assert [(w["node_id"], w["input_name"]) for w in validated.warnings] == [("12", "grow_mask_by")]
