"""The primitive nodes pass their widget on; PreviewAny shows any value as ComfyUI's text."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import torch

from engine import errors
from engine.cache import OutputCache
from engine.context import RunContext
from engine.events import ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.registry import NodeRegistry
from engine.sdk import NodeOutput
from engine.validate import validate_prompt
from engine.workflow import ui_to_api
from nodes import register_builtin_nodes
from nodes.primitives import (
    UNPRINTABLE,
    PreviewAny,
    PrimitiveBoolean,
    PrimitiveFloat,
    PrimitiveInt,
    PrimitiveString,
    PrimitiveStringMultiline,
    preview_text,
)


@pytest.mark.parametrize(("node", "value"), [
    (PrimitiveString, "a prompt"), (PrimitiveStringMultiline, "line 1\nline 2"), (PrimitiveInt, -(2**63 - 1)),
    (PrimitiveFloat, 0.1), (PrimitiveBoolean, False)])
def test_primitive_gives_its_value(ctx: RunContext, node: type[Any], value: Any) -> None:
    assert node().run(ctx, value=value) == (value,)


@pytest.mark.parametrize(("source", "expected"), [
    ("text\nas is", "text\nas is"), (None, "None"), (7, "7"), (2.5, "2.5"), (True, "True"), ("", "")])
def test_preview_of_scalars(source: Any, expected: str) -> None:
    assert preview_text(source) == expected


def test_preview_of_dicts_and_lists_is_json_indented_by_four() -> None:
    source = {"name": "café", "sizes": [512, 768], "nested": {"ok": True, "none": None}}
    text = preview_text(source)
    assert text == json.dumps(source, indent=4)
    assert '\n    "name": "caf\\u00e9",' in text  # ComfyUI keeps json.dumps' ASCII escapes
    assert preview_text((1, 2)) == "[\n    1,\n    2\n]"
    assert preview_text([]) == "[]"


def test_preview_of_tensors_and_latents_is_their_str() -> None:
    tensor = torch.arange(4.0)
    assert preview_text(tensor) == "tensor([0., 1., 2., 3.])"
    latent = {"samples": torch.zeros(1, 1, 1, 1)}
    assert preview_text(latent) == str(latent)
    assert "tensor(" in preview_text([tensor])


def test_preview_of_an_unprintable_value() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert preview_text(Broken()) == UNPRINTABLE


def test_preview_any_shows_and_returns_the_text(ctx: RunContext) -> None:
    result = PreviewAny().run(ctx, source={"a": 1})
    assert isinstance(result, NodeOutput)
    assert result.values == ('{\n    "a": 1\n}',)
    assert result.ui == {"text": ['{\n    "a": 1\n}']}


@pytest.fixture
def registry() -> NodeRegistry:
    made = NodeRegistry()
    register_builtin_nodes(made)
    return made


def test_primitives_feed_string_nodes_into_a_preview(registry: NodeRegistry, folders: Folders) -> None:
    prompt = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "Hello World"}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
        "3": {"class_type": "StringSubstring", "inputs": {"string": ["1", 0], "start": 0, "end": ["2", 0]}},
        "4": {"class_type": "CaseConverter", "inputs": {"string": ["3", 0], "mode": "UPPERCASE"}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "6": {"class_type": "StringLength", "inputs": {"string": ["1", 0]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
    }
    outcome = Executor(registry, folders, OutputCache(2**20, 100)).execute(prompt, "p", ListSink())
    assert outcome.status_str == "success", outcome.error
    assert outcome.outputs["5"] == {"text": ["HELLO"]}
    assert outcome.outputs["7"] == {"text": ["11"]}


@pytest.mark.parametrize("value", [sys.maxsize + 1, -sys.maxsize - 1])
def test_primitive_int_refuses_values_past_comfyui_s_bounds(
        registry: NodeRegistry, folders: Folders, value: int) -> None:
    prompt = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": value}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    with pytest.raises(errors.ValidationFailed, match="above its maximum|below its minimum"):
        validate_prompt(prompt, registry, folders)


def _editor_node(node_id: int, class_type: str, widgets: list[Any], inputs: list[dict[str, Any]] | None = None,
                 links: list[int] | None = None) -> dict[str, Any]:
    outputs = [{"name": "out", "type": "*", "links": links or []}]
    return {"id": node_id, "type": class_type, "mode": 0, "inputs": inputs or [], "outputs": outputs,
            "widgets_values": widgets}


def test_editor_workflow_reads_primitive_int_past_its_control_widget(registry: NodeRegistry) -> None:
    """ComfyUI's editor saves PrimitiveInt as [value, "increment"]; the control slot is not an input."""
    nodes = [
        _editor_node(1, "PrimitiveInt", [42, "increment"], links=[1]),
        _editor_node(2, "PreviewAny", [], inputs=[{"name": "source", "type": "*", "link": 1}]),
        _editor_node(3, "RegexReplace", ["a b", "b", "c", False, True, False, 2]),
    ]
    workflow = {"last_node_id": 3, "last_link_id": 1, "nodes": nodes, "links": [[1, 1, 0, 2, 0, "INT"]],
                "groups": [], "config": {}, "extra": {}, "version": 0.4}
    api = ui_to_api(workflow, registry)
    assert api["1"]["inputs"] == {"value": 42}
    assert api["2"]["inputs"] == {"source": ["1", 0]}
    assert api["3"]["inputs"] == {"string": "a b", "regex_pattern": "b", "replace": "c", "case_insensitive": False,
                                  "multiline": True, "dotall": False, "count": 2}
