from __future__ import annotations

from typing import Any

import pytest

from engine.errors import UnknownNode, ValidationFailed
from engine.workflow import is_link, is_ui_workflow, parse_api_prompt, ui_to_api
from tests.support.stub_nodes import StubWorld


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
