"""Subgraphs and group nodes of ComfyUI's editor format, flattened to the frontend's execution ids.

The workflows are written here in the shapes ComfyUI's frontend saves (tests/support/comfy_format.py), with
the stub nodes: StubInt(value) -> INT, StubAdd(a socket, b widget default 1) -> a + b, StubShow(value) shows it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine import errors
from engine.events import ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.validate import validate_prompt
from engine.workflow import ui_to_api
from tests.support.comfy_format import SUBGRAPH_IN, SUBGRAPH_OUT, definition, inp, link, node, out, workflow
from tests.support.stub_nodes import StubWorld, make_registry

ADDER = "6f1a8e3c-1d2b-4c5d-9e8f-0a1b2c3d4e5f"
OUTER = "0d9c8b7a-6f5e-4d3c-8b2a-19f8e7d6c5b4"
SHOW = "a3b4c5d6-e7f8-4a9b-8c0d-1e2f3a4b5c6d"
MISSING = "deadbeef-0000-4000-8000-000000000000"
ROOT = Path(__file__).resolve().parents[2]


def adder(inner_id: int = 10, *, b_input: bool = True, def_id: str = ADDER, name: str = "Adder",
          b_value: int = 7) -> dict[str, Any]:
    """Inputs a (socket) and b (promoted: linked to StubAdd's b widget); output sum = a + b."""
    links = [link(1, SUBGRAPH_IN, 0, inner_id, 0, "INT"), link(2, inner_id, 0, SUBGRAPH_OUT, 0, "INT")]
    inner_inputs = [inp("a", "INT", 1)]
    inputs = [("a", "INT")]
    if b_input:
        links.append(link(3, SUBGRAPH_IN, 1, inner_id, 1, "INT"))
        inner_inputs.append(inp("b", "INT", 3, widget=True))
        inputs.append(("b", "INT"))
    return definition(def_id, name, inputs=inputs, outputs=[("sum", "INT")], links=links,
                      nodes=[node(inner_id, "StubAdd", inputs=inner_inputs, outputs=[out("sum", "INT", [2])],
                                  widgets=[b_value], title="Inner add")])


def instance(node_id: int, def_id: str = ADDER, *, a_link: int | None = 1, out_links: tuple[int, ...] = (2,),
             widgets: Any = None, mode: int = 0, extra_inputs: tuple[dict[str, Any], ...] = (),
             properties: dict[str, Any] | None = None, title: str | None = None) -> dict[str, Any]:
    """An instance as the frontend saves it: unlinked promoted widget inputs are left out of ``inputs``."""
    inputs = ([inp("a", "INT", a_link)] if a_link is not None else []) + list(extra_inputs)
    return node(node_id, def_id, inputs=inputs, outputs=[out("sum", "INT", list(out_links))], widgets=widgets,
                mode=mode, properties=properties, title=title)


def one_instance(**kw: Any) -> dict[str, Any]:
    """StubInt(5) -> instance 74 of Adder -> StubShow 2."""
    nodes = [node(1, "StubInt", outputs=[out("INT", "INT", [1])], widgets=[5]), instance(74, **kw),
             node(2, "StubShow", inputs=[inp("value", "*", 2)])]
    return workflow(nodes, [[1, 1, 0, 74, 0, "INT"], [2, 74, 0, 2, 0, "INT"]], subgraphs=[adder()])


def run(executor: Executor, prompt: dict[str, Any]) -> Any:
    outcome = executor.execute(prompt, "p", ListSink())
    assert outcome.status_str == "success", outcome.messages
    return outcome


# ------------------------------------------------------------------ ids, links across the boundary


def test_inner_nodes_get_the_frontends_execution_ids(world: StubWorld, executor: Executor) -> None:
    api = ui_to_api(one_instance(), world.registry)
    assert sorted(api) == ["1", "2", "74:10"]
    assert api["74:10"] == {"class_type": "StubAdd", "inputs": {"a": ["1", 0], "b": 7},
                            "_meta": {"title": "Inner add"}}
    assert api["2"]["inputs"] == {"value": ["74:10", 0]}
    outcome = run(executor, api)
    assert outcome.outputs == {"2": {"text": ["12"]}}
    assert "74:10" in outcome.executed


def test_subgraph_output_fed_straight_from_its_input(world: StubWorld) -> None:
    passthrough = definition(ADDER, "Pass", inputs=[("a", "INT")], outputs=[("sum", "INT")],
                             links=[link(1, SUBGRAPH_IN, 0, SUBGRAPH_OUT, 0, "INT")])
    wf = one_instance()
    wf["definitions"]["subgraphs"] = [passthrough]
    api = ui_to_api(wf, world.registry)
    assert sorted(api) == ["1", "2"] and api["2"]["inputs"] == {"value": ["1", 0]}


# ------------------------------------------------------------------ promoted widgets


def test_promoted_widget_value_comes_from_the_instance(world: StubWorld) -> None:
    api = ui_to_api(one_instance(widgets=[42]), world.registry)
    assert api["74:10"]["inputs"] == {"a": ["1", 0], "b": 42}


def test_without_a_promoted_value_the_inner_widget_keeps_its_own(world: StubWorld) -> None:
    assert ui_to_api(one_instance(), world.registry)["74:10"]["inputs"]["b"] == 7


def test_proxy_widgets_name_the_promoted_values(world: StubWorld) -> None:
    """Frontends of late 2025: ``properties.proxyWidgets`` lists [-1, input] and [inner id, widget] pairs."""
    wf = one_instance(widgets=[43], properties={"proxyWidgets": [["-1", "b"]]})
    assert ui_to_api(wf, world.registry)["74:10"]["inputs"]["b"] == 43
    direct = one_instance(widgets=[99], properties={"proxyWidgets": [["10", "b"]]})
    direct["definitions"]["subgraphs"] = [adder(b_input=False)]
    assert ui_to_api(direct, world.registry)["74:10"]["inputs"] == {"a": ["1", 0], "b": 99}
    as_text = one_instance(widgets=[44], properties={"proxyWidgets": '[["-1", "b"]]'})  # the first form, JSON text
    assert ui_to_api(as_text, world.registry)["74:10"]["inputs"]["b"] == 44


def test_a_link_into_the_instance_beats_its_widget_value(world: StubWorld) -> None:
    wf = one_instance(widgets=[42], extra_inputs=(inp("b", "INT", 3, widget=True),))
    wf["nodes"].append(node(3, "StubInt", outputs=[out("INT", "INT", [3])], widgets=[9]))
    wf["links"].append([3, 3, 0, 74, 1, "INT"])
    assert ui_to_api(wf, world.registry)["74:10"]["inputs"]["b"] == ["3", 0]
    # A PrimitiveNode outside feeding the instance gives its value.
    wf["nodes"][-1] = node(3, "PrimitiveNode", outputs=[out("INT", "INT", [3])], widgets=[11, "fixed"])
    assert ui_to_api(wf, world.registry)["74:10"]["inputs"]["b"] == 11


def test_unconnected_input_feeds_every_inner_widget_it_is_linked_to(world: StubWorld) -> None:
    """One subgraph input linked to two inner widgets (the Qwen template's lora_name), used by two instances."""
    pair = definition(ADDER, "Pair", inputs=[("a", "INT"), ("b", "INT")], outputs=[("sum", "INT")],
                      links=[link(1, SUBGRAPH_IN, 0, 10, 0, "INT"), link(3, SUBGRAPH_IN, 1, 10, 1, "INT"),
                             link(4, 10, 0, 11, 0, "INT"), link(5, SUBGRAPH_IN, 1, 11, 1, "INT"),
                             link(2, 11, 0, SUBGRAPH_OUT, 0, "INT")],
                      nodes=[node(10, "StubAdd", inputs=[inp("a", "INT", 1), inp("b", "INT", 3, widget=True)],
                                  outputs=[out("sum", "INT", [4])], widgets=[0]),
                             node(11, "StubAdd", inputs=[inp("a", "INT", 4), inp("b", "INT", 5, widget=True)],
                                  outputs=[out("sum", "INT", [2])], widgets=[0])])
    nodes = [node(1, "StubInt", outputs=[out("INT", "INT", [1, 3])], widgets=[5]),
             instance(74, widgets=[3]), instance(80, a_link=3, out_links=(4,), widgets=[4]),
             node(2, "StubShow", inputs=[inp("value", "*", 2)]), node(6, "StubShow", inputs=[inp("value", "*", 4)])]
    links = [[1, 1, 0, 74, 0, "INT"], [2, 74, 0, 2, 0, "INT"], [3, 1, 0, 80, 0, "INT"], [4, 80, 0, 6, 0, "INT"]]
    api = ui_to_api(workflow(nodes, links, subgraphs=[pair]), world.registry)
    assert sorted(api) == ["1", "2", "6", "74:10", "74:11", "80:10", "80:11"]
    assert [api[i]["inputs"]["b"] for i in ("74:10", "74:11", "80:10", "80:11")] == [3, 3, 4, 4]
    assert api["80:11"]["inputs"]["a"] == ["80:10", 0] and api["6"]["inputs"]["value"] == ["80:11", 0]


def test_control_after_generate_values_of_promoted_widgets_are_skipped(world: StubWorld) -> None:
    """Older instances saved a seed's control value after it, as the inner node does."""
    opts = definition(ADDER, "Options", inputs=[("seed", "INT"), ("ratio", "FLOAT")], outputs=[("s", "STRING")],
                      links=[link(1, SUBGRAPH_IN, 0, 10, 0, "INT"), link(3, SUBGRAPH_IN, 1, 10, 1, "FLOAT"),
                             link(2, 10, 0, SUBGRAPH_OUT, 0, "STRING")],
                      nodes=[node(10, "StubOptions", inputs=[inp("seed", "INT", 1, widget=True),
                                                             inp("ratio", "FLOAT", 3, widget=True)],
                                  outputs=[out("STRING", "STRING", [2])],
                                  widgets=[False, 0.5, "", "fast", 1, "randomize", 3])])
    for values in ([1234, "randomize", 0.75], [1234, 0.75]):
        nodes = [node(74, ADDER, outputs=[out("s", "STRING", [2])], widgets=values),
                 node(2, "StubShow", inputs=[inp("value", "*", 2)])]
        api = ui_to_api(workflow(nodes, [[2, 74, 0, 2, 0, "STRING"]], subgraphs=[opts]), world.registry)
        assert api["74:10"]["inputs"] == {"flag": False, "ratio": 0.75, "text": "", "mode": "fast", "seed": 1234,
                                          "extra": 3}


# ------------------------------------------------------------------ nesting


def nested(inner_widgets: Any = None) -> dict[str, Any]:
    """StubInt 1 -> 74 (Outer: a -> 12 (Adder: a, b -> StubAdd 3) -> StubAdd 13) -> StubShow 2."""
    inner = adder(inner_id=3)
    outer = definition(OUTER, "Outer", inputs=[("a", "INT")], outputs=[("r", "INT")],
                       links=[link(1, SUBGRAPH_IN, 0, 12, 0, "INT"), link(5, 12, 0, 13, 0, "INT"),
                              link(6, 13, 0, SUBGRAPH_OUT, 0, "INT")],
                       nodes=[node(12, ADDER, inputs=[inp("a", "INT", 1)], outputs=[out("sum", "INT", [5])],
                                   widgets=inner_widgets),
                              node(13, "StubAdd", inputs=[inp("a", "INT", 5)], outputs=[out("sum", "INT", [6])],
                                   widgets=[100])])
    nodes = [node(1, "StubInt", outputs=[out("INT", "INT", [1])], widgets=[5]),
             node(74, OUTER, inputs=[inp("a", "INT", 1)], outputs=[out("r", "INT", [2])]),
             node(2, "StubShow", inputs=[inp("value", "*", 2)])]
    return workflow(nodes, [[1, 1, 0, 74, 0, "INT"], [2, 74, 0, 2, 0, "INT"]], subgraphs=[outer, inner])


def test_nested_subgraphs_join_the_instance_path(world: StubWorld, executor: Executor) -> None:
    api = ui_to_api(nested(), world.registry)
    assert sorted(api) == ["1", "2", "74:12:3", "74:13"]
    assert api["74:12:3"]["inputs"] == {"a": ["1", 0], "b": 7}
    assert api["74:13"]["inputs"] == {"a": ["74:12:3", 0], "b": 100}
    assert api["2"]["inputs"] == {"value": ["74:13", 0]}
    assert run(executor, api).outputs == {"2": {"text": ["112"]}}


def test_nested_promoted_values(world: StubWorld) -> None:
    wf = nested(inner_widgets=[20])  # the nested instance's own promoted value
    assert ui_to_api(wf, world.registry)["74:12:3"]["inputs"]["b"] == 20
    wf["nodes"][1]["properties"]["proxyWidgets"] = [["12", "b"]]  # promoted again, onto the outer instance
    wf["nodes"][1]["widgets_values"] = [30]
    assert ui_to_api(wf, world.registry)["74:12:3"]["inputs"]["b"] == 30


# ------------------------------------------------------------------ modes, reroutes, primitives


def test_muted_and_bypassed_inner_nodes(world: StubWorld) -> None:
    muted = one_instance()
    muted["definitions"]["subgraphs"][0]["nodes"][0]["mode"] = 2
    api = ui_to_api(muted, world.registry)
    assert sorted(api) == ["1", "2"] and api["2"]["inputs"] == {}
    bypassed = one_instance()
    bypassed["definitions"]["subgraphs"][0]["nodes"][0]["mode"] = 4
    api = ui_to_api(bypassed, world.registry)
    assert sorted(api) == ["1", "2"] and api["2"]["inputs"] == {"value": ["1", 0]}


def test_muted_and_bypassed_instances_run_none_of_their_nodes(world: StubWorld) -> None:
    api = ui_to_api(one_instance(mode=2), world.registry)
    assert sorted(api) == ["1", "2"] and api["2"]["inputs"] == {}
    api = ui_to_api(one_instance(mode=4), world.registry)  # passes its INT input through to its INT output
    assert sorted(api) == ["1", "2"] and api["2"]["inputs"] == {"value": ["1", 0]}
    wf = nested()
    wf["definitions"]["subgraphs"][0]["nodes"][0]["mode"] = 2  # a muted instance inside a subgraph
    api = ui_to_api(wf, world.registry)
    assert sorted(api) == ["1", "2", "74:13"] and api["74:13"]["inputs"] == {"b": 100}


def test_reroutes_and_primitives_inside_a_subgraph(world: StubWorld) -> None:
    sub = definition(ADDER, "Adder", inputs=[("a", "INT")], outputs=[("sum", "INT")],
                     links=[link(1, SUBGRAPH_IN, 0, 20, 0, "INT"), link(7, 20, 0, 10, 0, "INT"),
                            link(8, 21, 0, 10, 1, "INT"), link(2, 10, 0, SUBGRAPH_OUT, 0, "INT")],
                     nodes=[node(20, "Reroute", inputs=[inp("", "*", 1)], outputs=[out("", "INT", [7])]),
                            node(21, "PrimitiveNode", outputs=[out("INT", "INT", [8])], widgets=[17, "fixed"]),
                            node(10, "StubAdd", inputs=[inp("a", "INT", 7), inp("b", "INT", 8, widget=True)],
                                 outputs=[out("sum", "INT", [2])], widgets=[0]),
                            node(22, "Note", widgets=["a note inside"])])
    wf = one_instance()
    wf["definitions"]["subgraphs"] = [sub]
    api = ui_to_api(wf, world.registry)
    assert sorted(api) == ["1", "2", "74:10"] and api["74:10"]["inputs"] == {"a": ["1", 0], "b": 17}


# ------------------------------------------------------------------ errors name the node


def _errors(world: StubWorld, wf: dict[str, Any]) -> list[errors.GraphError]:
    with pytest.raises(errors.ValidationFailed) as caught:
        ui_to_api(wf, world.registry)
    return caught.value.errors


def test_missing_definition_names_the_instance(world: StubWorld) -> None:
    wf = one_instance(title="My subgraph")
    wf["nodes"][1]["type"] = MISSING
    [err] = _errors(world, wf)
    assert isinstance(err, errors.UnknownNode) and err.node_id == "74"
    assert "node 74 ('My subgraph')" in err.message and "definitions.subgraphs" in err.message
    assert MISSING in err.message


def test_unknown_inner_node_is_named_by_its_execution_id(world: StubWorld) -> None:
    wf = one_instance()
    wf["definitions"]["subgraphs"][0]["nodes"][0]["type"] = "MysteryNode"
    [err] = _errors(world, wf)
    assert isinstance(err, errors.UnknownNode) and err.node_id == "74:10"
    assert err.message.startswith("node 74:10 ('Inner add') inside subgraph 'Adder' (node 74) has unknown type "
                                  "'MysteryNode'")


def test_a_subgraph_inside_itself_is_refused(world: StubWorld) -> None:
    wf = one_instance()
    loop = node(11, ADDER, inputs=[inp("a", "INT", None)])
    wf["definitions"]["subgraphs"][0]["nodes"].append(loop)
    [err] = _errors(world, wf)
    assert err.node_id == "74:11" and "contains itself" in err.message


def test_null_class_type_of_an_inner_node_names_id_and_title(world: StubWorld, folders: Folders) -> None:
    prompt = {"74:10": {"class_type": None, "inputs": {}, "_meta": {"title": "Lost node"}},
              "2": {"class_type": "StubShow", "inputs": {"value": ["74:10", 0]}}}
    with pytest.raises(errors.ValidationFailed) as caught:
        validate_prompt(prompt, world.registry, folders)
    [err] = caught.value.errors
    assert err.node_id == "74:10" and "node 74:10 ('Lost node')" in err.message


def test_links_looping_through_a_subgraph_are_refused(world: StubWorld) -> None:
    passthrough = definition(ADDER, "Pass", inputs=[("a", "INT")], outputs=[("sum", "INT")],
                             links=[link(1, SUBGRAPH_IN, 0, SUBGRAPH_OUT, 0, "INT")])
    nodes = [node(74, ADDER, inputs=[inp("a", "INT", 1)], outputs=[out("sum", "INT", [1, 2])]),
             node(2, "StubShow", inputs=[inp("value", "*", 2)])]
    wf = workflow(nodes, [[1, 74, 0, 74, 0, "INT"], [2, 74, 0, 2, 0, "INT"]], subgraphs=[passthrough])
    errs = _errors(world, wf)
    assert errs and all(isinstance(e, errors.BadLink) and "loop" in e.message for e in errs)


def test_a_very_long_chain_of_pass_through_instances_is_refused(world: StubWorld) -> None:
    passthrough = definition(ADDER, "Pass", inputs=[("a", "INT")], outputs=[("sum", "INT")],
                             links=[link(1, SUBGRAPH_IN, 0, SUBGRAPH_OUT, 0, "INT")])
    count = 1000
    nodes = [node(1, "StubInt", outputs=[out("INT", "INT", [1])], widgets=[5])]
    links = []
    for i in range(count):
        nodes.append(node(100 + i, ADDER, inputs=[inp("a", "INT", i + 1)], outputs=[out("sum", "INT", [i + 2])]))
        links.append([i + 1, 1 if i == 0 else 99 + i, 0, 100 + i, 0, "INT"])
    nodes.append(node(2, "StubShow", inputs=[inp("value", "*", count + 1)]))
    links.append([count + 1, 99 + count, 0, 2, 0, "INT"])
    [err] = _errors(world, workflow(nodes, links, subgraphs=[passthrough]))
    assert isinstance(err, errors.BadLink) and "more than" in err.message


# ------------------------------------------------------------------ legacy group nodes


def group_workflow(kind: str = "workflow>adder", widgets: Any = (10, 20)) -> dict[str, Any]:
    """Group node 5 (StubInt -> StubAdd, the sum used outside) -> StubShow 6."""
    group = {"nodes": [node(-1, "StubInt", outputs=[out("INT", "INT", [])], widgets=[1]) | {"index": 0},
                       node(-1, "StubAdd", inputs=[inp("a", "INT", None)], outputs=[out("sum", "INT", [])],
                            widgets=[2]) | {"index": 1}],
             "links": [[0, 0, 1, 0, 3, "INT"]], "external": [[1, 0, "INT"]]}
    nodes = [node(5, kind, outputs=[out("sum", "INT", [1])], widgets=list(widgets) if widgets else None),
             node(6, "StubShow", inputs=[inp("value", "*", 1)])]
    return workflow(nodes, [[1, 5, 0, 6, 0, "INT"]], extra={"groupNodes": {"adder": group}})


@pytest.mark.parametrize("kind", ["workflow>adder", "workflow/adder"])
def test_group_node_expands_to_group_id_and_index(world: StubWorld, executor: Executor, kind: str) -> None:
    api = ui_to_api(group_workflow(kind), world.registry)
    assert sorted(api) == ["5:0", "5:1", "6"]
    assert api["5:0"]["inputs"] == {"value": 10}
    assert api["5:1"]["inputs"] == {"a": ["5:0", 0], "b": 20}
    assert api["6"]["inputs"] == {"value": ["5:1", 0]}
    assert run(executor, api).outputs == {"6": {"text": ["30"]}}


def test_group_node_inputs_and_saved_inner_values(world: StubWorld) -> None:
    wf = group_workflow(widgets=None)  # no widgets_values: the inner nodes keep theirs
    api = ui_to_api(wf, world.registry)
    assert api["5:0"]["inputs"] == {"value": 1} and api["5:1"]["inputs"]["b"] == 2
    # The StubAdd's a fed from outside: a group input.
    group = wf["extra"]["groupNodes"]["adder"]
    group["links"] = []
    group["external"] = [[0, 0, "INT"], [1, 0, "INT"]]
    wf["nodes"][0]["inputs"] = [inp("a", "INT", 2)]
    wf["nodes"][0]["outputs"] = [out("INT", "INT", []), out("sum", "INT", [1])]
    wf["links"] = [[1, 5, 1, 6, 0, "INT"], [2, 7, 0, 5, 0, "INT"]]
    wf["nodes"].append(node(7, "StubInt", outputs=[out("INT", "INT", [2])], widgets=[40]))
    api = ui_to_api(wf, world.registry)
    assert api["5:1"]["inputs"] == {"a": ["7", 0], "b": 2} and api["6"]["inputs"] == {"value": ["5:1", 0]}


def test_group_node_widgets_follow_the_inner_nodes_widgets(world: StubWorld) -> None:
    """The group's widgets_values: each inner node's widgets in order, a seed's control value after it."""
    wf = group_workflow(widgets=None)
    wf["extra"]["groupNodes"]["adder"]["nodes"].append(
        node(-1, "StubOptions", outputs=[out("STRING", "STRING", [])],
             widgets=[False, 0.5, "", "fast", 0, "fixed", 3]) | {"index": 2})
    wf["nodes"][0]["outputs"].append(out("STRING", "STRING", []))
    wf["nodes"][0]["widgets_values"] = [10, 20, True, 0.25, "hi", "slow", 77, "randomize", 9]
    api = ui_to_api(wf, world.registry)
    assert api["5:0"]["inputs"] == {"value": 10} and api["5:1"]["inputs"]["b"] == 20
    assert api["5:2"]["inputs"] == {"flag": True, "ratio": 0.25, "text": "hi", "mode": "slow", "seed": 77,
                                    "extra": 9}
    wf["nodes"][0]["widgets_values"] = [10, 20]  # not this group's layout: the inner nodes keep their values
    api = ui_to_api(wf, world.registry)
    assert api["5:0"]["inputs"] == {"value": 1} and api["5:2"]["inputs"]["seed"] == 0


@pytest.mark.parametrize("mode", [2, 4])
def test_muted_and_bypassed_group_nodes_run_none_of_their_nodes(world: StubWorld, mode: int) -> None:
    wf = group_workflow()
    wf["nodes"][0]["mode"] = mode
    api = ui_to_api(wf, world.registry)
    assert sorted(api) == ["6"] and api["6"]["inputs"] == {}  # nothing to pass through: it has no inputs


def test_missing_group_definition_names_the_node(world: StubWorld) -> None:
    wf = group_workflow()
    wf["extra"]["groupNodes"] = {}
    [err] = _errors(world, wf)
    assert err.node_id == "5" and "extra.groupNodes" in err.message and "'adder'" in err.message


# ------------------------------------------------------------------ the workflow is only read


def test_conversion_leaves_the_workflow_unchanged(world: StubWorld) -> None:
    wf = nested(inner_widgets=[20])
    before = copy.deepcopy(wf)
    ui_to_api(wf, world.registry)
    assert wf == before


# ------------------------------------------------------------------ headless: python main.py run


def test_main_run_runs_a_subgraph_workflow(tmp_path: Path) -> None:
    """EmptyImage -> instance 74 of "Invert and scale" (ImageInvert, ImageScaleBy with scale_by promoted)
    -> SaveImage, through ``python main.py run`` with the built-in nodes."""
    sub = definition(ADDER, "Invert and scale", inputs=[("image", "IMAGE"), ("scale_by", "FLOAT")],
                     outputs=[("IMAGE", "IMAGE")],
                     links=[link(1, SUBGRAPH_IN, 0, 10, 0, "IMAGE"), link(4, 10, 0, 11, 0, "IMAGE"),
                            link(3, SUBGRAPH_IN, 1, 11, 1, "FLOAT"), link(2, 11, 0, SUBGRAPH_OUT, 0, "IMAGE")],
                     nodes=[node(10, "ImageInvert", inputs=[inp("image", "IMAGE", 1)],
                                 outputs=[out("IMAGE", "IMAGE", [4])]),
                            node(11, "ImageScaleBy", inputs=[inp("image", "IMAGE", 4),
                                                             inp("scale_by", "FLOAT", 3, widget=True)],
                                 outputs=[out("IMAGE", "IMAGE", [2])], widgets=["nearest-exact", 1.0])])
    nodes = [node(1, "EmptyImage", outputs=[out("IMAGE", "IMAGE", [1])], widgets=[32, 16, 1, 0]),
             node(74, ADDER, inputs=[inp("image", "IMAGE", 1)], outputs=[out("IMAGE", "IMAGE", [2])],
                  widgets=[0.5], properties={"proxyWidgets": [["-1", "scale_by"]]}),
             node(9, "SaveImage", inputs=[inp("images", "IMAGE", 2)], widgets=["subgraph-run"])]
    path = tmp_path / "subgraph.json"
    path.write_text(json.dumps(workflow(nodes, [[1, 1, 0, 74, 0, "IMAGE"], [2, 74, 0, 9, 0, "IMAGE"]],
                                        subgraphs=[sub])))
    dirs = [arg for name in ("input", "output", "temp", "data") for arg in (f"--{name}-dir", str(tmp_path / name))]
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "run", str(path), *dirs], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [saved] = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    assert saved.name == "subgraph-run_00001_.png"
    pixels = np.asarray(Image.open(saved))
    assert pixels.shape == (8, 16, 3) and (pixels == 255).all()  # black inverted, halved


# ------------------------------------------------------------------ malformed files fail cleanly


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copied = copy.copy(value)
    copied[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copied


def _both_kinds() -> dict[str, Any]:
    wf = nested(inner_widgets=[20])
    group = group_workflow()
    wf["nodes"] += [node(5, "workflow>adder", outputs=[out("sum", "INT", [])], widgets=[1, 2])]
    wf["extra"]["groupNodes"] = group["extra"]["groupNodes"]
    wf["nodes"][1]["properties"]["proxyWidgets"] = [["12", "b"]]
    return wf


_BASE = _both_kinds()
_PATHS = _paths(_BASE)
_junk = st.none() | st.booleans() | st.integers(-25, 25) | st.sampled_from(
    [-10, -20, "-10", "74", ADDER, OUTER, "workflow>adder", "StubAdd", 1.5, "x", [], {}, [1, 2], [None, 0, 1, 0],
     {"id": 1}, [["-1", "b"]], [["12"]]])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, len(_PATHS) - 1), _junk), min_size=1, max_size=3))
def test_damaged_subgraph_workflows_fail_only_with_validation_errors(edits: list[tuple[int, Any]]) -> None:
    wf: Any = _BASE
    for index, new in edits:
        path = _PATHS[index]
        try:
            wf = _replaced(wf, path, new)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed the place
    try:
        api = ui_to_api(wf, _REGISTRY)
    except errors.ValidationFailed as exc:
        assert exc.errors
        return
    assert all(isinstance(node_id, str) and isinstance(entry["inputs"], dict) for node_id, entry in api.items())


_REGISTRY = make_registry().registry
