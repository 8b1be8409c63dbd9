"""API format -> editor format (engine.workflow_layout): the shipped workflows round-trip through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import ValidationFailed
from engine.registry import NodeRegistry
from engine.workflow import ui_to_api
from engine.workflow_layout import api_to_ui
from nodes import register_builtin_nodes
from tests.support.stub_nodes import make_registry
from tools.make_example_workflows import WORKFLOWS as WORKFLOW_BUILDERS

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry


def strip_meta(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_to_ui_round_trips_every_shipped_workflow(path: Path, registry: NodeRegistry) -> None:
    api = ui_to_api(json.loads(path.read_text()), registry)
    editor = api_to_ui(api, registry)
    assert ui_to_api(editor, registry) == api  # titles included
    if path.stem in WORKFLOW_BUILDERS:  # tools/make_example_workflows.py writes these with api_to_ui
        assert json.loads(path.read_text()) == editor


def test_links_run_left_to_right_and_nodes_do_not_overlap(registry: NodeRegistry) -> None:
    api = ui_to_api(json.loads((REPO / "workflows" / "hires-fix.json").read_text()), registry)
    editor = api_to_ui(api, registry)
    by_id = {n["id"]: n for n in editor["nodes"]}
    for _, origin, _, target, _, _ in editor["links"]:
        assert by_id[origin]["pos"][0] < by_id[target]["pos"][0]
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in editor["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_linked_widget_becomes_a_widget_socket_and_ids_are_renumbered() -> None:
    registry = make_registry().registry  # StubInt (INT out) feeding StubAdd's widget b
    api = {
        "first": {"class_type": "StubInt", "inputs": {"value": 7}},
        "second": {"class_type": "StubInt", "inputs": {"value": [1, 2]}},  # a bad value survives, wrapped
        "sum": {"class_type": "StubAdd", "inputs": {"a": ["second", 0], "b": ["first", 0]}},
    }
    editor = api_to_ui(api, registry)
    assert [n["id"] for n in editor["nodes"]] == [1, 2, 3]
    add = editor["nodes"][2]
    assert [(s["name"], s.get("widget")) for s in add["inputs"]] == [("a", None), ("b", {"name": "b"})]
    assert add["widgets_values"] == [1]  # b's default stands in for the linked value
    assert [n["pos"][0] for n in editor["nodes"]] == [40, 40, 380]
    back = ui_to_api(editor, registry)
    assert back["3"]["inputs"] == {"a": ["2", 0], "b": ["1", 0]}
    assert back["2"]["inputs"] == {"value": {"__value__": [1, 2]}}


def test_unknown_class_and_cycles(registry: NodeRegistry) -> None:
    with pytest.raises(ValidationFailed, match="unknown type 'Nope'"):
        api_to_ui({"1": {"class_type": "Nope", "inputs": {}}}, registry)
    cycle = {"1": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["2", 0]}},
             "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["1", 0]}}}
    editor = api_to_ui(cycle, registry)  # an invalid graph still opens, for the user to fix
    assert len(editor["nodes"]) == 2


def test_a_negative_output_slot_is_left_unlinked(registry: NodeRegistry) -> None:
    """A link to slot -1 named an output from the end (IndexError: a 500 on /loom/workflow/editor), issue 15."""
    api = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
           "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", -5], "filename_prefix": "x"}}}
    editor = api_to_ui(api, registry)
    assert editor["links"] == []
    assert {n["type"] for n in editor["nodes"]} == {"EmptyLatentImage", "SaveLatent"}
