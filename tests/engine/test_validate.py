from __future__ import annotations

from typing import Any

import pytest

from engine import errors
from engine.folders import Folders
from engine.validate import validate_prompt
from engine.workflow import ui_to_api
from tests.support.stub_nodes import StubWorld, chain


def _errors(world: StubWorld, folders: Folders, prompt: Any) -> list[errors.GraphError]:
    with pytest.raises(errors.ValidationFailed) as caught:
        validate_prompt(prompt, world.registry, folders)
    return caught.value.errors


def _options(**overrides: Any) -> dict[str, Any]:
    inputs = {"flag": False, "ratio": 0.5, "text": "", "mode": "fast", "seed": 0}
    inputs.update(overrides)
    return {"1": {"class_type": "StubOptions", "inputs": inputs},
            "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}}


def test_valid_chain_keeps_every_node(world: StubWorld, folders: Folders) -> None:
    result = validate_prompt(chain(3), world.registry, folders)
    assert result.outputs == ["5"]
    assert sorted(result.nodes) == ["1", "2", "3", "4", "5"]
    assert result.nodes["2"].links == {"a": ("1", 0)}
    assert result.nodes["2"].literals == {"b": 1}


def test_unknown_class_names_node_and_type(world: StubWorld, folders: Folders) -> None:
    prompt = chain(1)
    prompt["2"]["class_type"] = "NoSuchNode"
    [err] = _errors(world, folders, prompt)
    assert isinstance(err, errors.UnknownNode)
    assert err.node_id == "2" and "NoSuchNode" in err.message


def test_missing_required_input(world: StubWorld, folders: Folders) -> None:
    prompt = chain(1)
    del prompt["2"]["inputs"]["a"]
    [err] = _errors(world, folders, prompt)
    assert isinstance(err, errors.MissingInput)
    assert (err.node_id, err.input_name) == ("2", "a")
    assert "link a INT output" in err.message


def test_link_to_missing_node_and_bad_index(world: StubWorld, folders: Folders) -> None:
    prompt = chain(2)
    prompt["2"]["inputs"]["a"] = ["99", 0]
    [err] = _errors(world, folders, prompt)
    assert isinstance(err, errors.BadLink) and err.node_id == "2" and "99" in err.message
    prompt = chain(2)
    prompt["3"]["inputs"]["a"] = ["2", 5]
    [err] = _errors(world, folders, prompt)
    assert isinstance(err, errors.BadLink) and err.node_id == "3" and "output 5" in err.message


def test_type_mismatch(world: StubWorld, folders: Folders) -> None:
    prompt = _options()
    del prompt["2"]
    prompt["3"] = {"class_type": "StubAdd", "inputs": {"a": ["1", 0], "b": 1}}
    prompt["4"] = {"class_type": "StubShow", "inputs": {"value": ["3", 0]}}
    [err] = _errors(world, folders, prompt)
    assert isinstance(err, errors.TypeMismatch)
    assert (err.node_id, err.input_name) == ("3", "a")
    assert "expects INT" in err.message and "gives STRING" in err.message


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("ratio", 1.5, errors.ValueTooLarge),
        ("ratio", -0.1, errors.ValueTooSmall),
        ("ratio", "abc", errors.BadValue),
        ("seed", 1.5, errors.BadValue),
        ("seed", True, errors.BadValue),
        ("flag", "maybe", errors.BadValue),
        ("mode", "medium", errors.NotInChoices),
        ("text", {"a": 1}, errors.BadValue),
    ],
)
def test_bad_values(world: StubWorld, folders: Folders, name: str, value: Any, kind: type) -> None:
    [err] = _errors(world, folders, _options(**{name: value}))
    assert isinstance(err, kind)
    assert (err.node_id, err.input_name) == ("1", name)
    assert err.extra_info["received_value"] == value


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ratio", "0.25", 0.25),
        ("ratio", 1, 1.0),
        ("seed", "42", 42),
        ("seed", 7.0, 7),
        ("seed", 2**64 - 1, 2**64 - 1),
        ("flag", "false", False),
        ("flag", "False", False),
        ("flag", "true", True),
        ("flag", 0, False),
        ("text", 12, "12"),
        ("mode", {"__value__": "slow"}, "slow"),
    ],
)
def test_coercion(world: StubWorld, folders: Folders, name: str, value: Any, expected: Any) -> None:
    result = validate_prompt(_options(**{name: value}), world.registry, folders)
    got = result.nodes["1"].literals[name]
    assert got == expected and type(got) is type(expected)


def test_optional_input_may_be_absent(world: StubWorld, folders: Folders) -> None:
    result = validate_prompt(_options(), world.registry, folders)
    assert "extra" not in result.nodes["1"].literals


def test_cycle_is_reported_not_recursed(world: StubWorld, folders: Folders) -> None:
    prompt = chain(3)
    prompt["2"]["inputs"]["a"] = ["4", 0]
    errs = _errors(world, folders, prompt)
    assert any(isinstance(e, errors.Cycle) for e in errs)
    assert all(e.node_id in {"2", "3", "4"} for e in errs)


def test_no_output_node(world: StubWorld, folders: Folders) -> None:
    [err] = _errors(world, folders, {"1": {"class_type": "StubInt", "inputs": {"value": 1}}})
    assert isinstance(err, errors.NoOutputs) and err.node_id is None


def test_malformed_prompt(world: StubWorld, folders: Folders) -> None:
    [err] = _errors(world, folders, {"1": {"inputs": {}}})
    assert isinstance(err, errors.MalformedNode) and err.node_id == "1"
    [err] = _errors(world, folders, [])
    assert isinstance(err, errors.MalformedNode)


def test_every_error_at_once_in_comfy_shape(world: StubWorld, folders: Folders) -> None:
    prompt = _options(ratio=7, mode="nope")
    prompt["3"] = {"class_type": "StubAdd", "inputs": {"b": "x"}}
    prompt["4"] = {"class_type": "StubShow", "inputs": {"value": ["3", 0]}}
    with pytest.raises(errors.ValidationFailed) as caught:
        validate_prompt(prompt, world.registry, folders)
    body = caught.value.to_response()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    node1 = body["node_errors"]["1"]
    assert {e["type"] for e in node1["errors"]} == {"value_bigger_than_max", "value_not_in_list"}
    assert node1["dependent_outputs"] == ["2"] and node1["class_type"] == "StubOptions"
    node3 = body["node_errors"]["3"]
    assert {e["type"] for e in node3["errors"]} == {"required_input_missing", "invalid_input_type"}
    assert node3["dependent_outputs"] == ["4"]
    for entry in node1["errors"] + node3["errors"]:
        assert set(entry) == {"type", "message", "details", "extra_info"}


def test_downstream_of_invalid_node_not_reported(world: StubWorld, folders: Folders) -> None:
    prompt = chain(3)
    prompt["2"]["inputs"]["b"] = "not a number"
    errs = _errors(world, folders, prompt)
    assert [e.node_id for e in errs] == ["2"]


def test_valid_outputs_run_when_another_fails(world: StubWorld, folders: Folders) -> None:
    prompt = chain(1)
    prompt["10"] = {"class_type": "StubAdd", "inputs": {"a": ["1", 0], "b": "bad"}}
    prompt["11"] = {"class_type": "StubShow", "inputs": {"value": ["10", 0]}}
    result = validate_prompt(prompt, world.registry, folders)
    assert result.outputs == ["3"]
    assert "10" in result.node_errors and "10" not in result.nodes


def test_partial_targets(world: StubWorld, folders: Folders) -> None:
    prompt = chain(1)
    prompt["10"] = {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}
    result = validate_prompt(prompt, world.registry, folders, targets=["10"])
    assert result.outputs == ["10"] and sorted(result.nodes) == ["1", "10"]


def test_deep_chain_does_not_hit_recursion_limit(world: StubWorld, folders: Folders) -> None:
    result = validate_prompt(chain(5000), world.registry, folders)
    assert len(result.nodes) == 5002


# ---------------------------------------------------------------- issue 15: ranges, unknown classes, link ids


@pytest.mark.parametrize(("name", "value"), [
    ("ratio", 10**400), ("ratio", "9" * 400), ("ratio", -(10**400)),  # float() would raise OverflowError
    ("extra", 10**400), ("extra", 2**64), ("extra", -(2**63) - 1), ("extra", str(10**30)),
], ids=["float-huge", "float-huge-text", "float-huge-negative", "int-huge", "int-2**64", "int-below-int64",
        "int-huge-text"])
def test_numbers_out_of_range_name_node_and_input(world: StubWorld, folders: Folders, name: str,
                                                  value: Any) -> None:
    [err] = _errors(world, folders, _options(**{name: value}))
    assert isinstance(err, errors.BadValue) and err.node_id == "1" and err.input_name == name
    assert f"node 1 (StubOptions) input '{name}'" in err.message and len(err.message) < 300


def test_ints_at_the_64_bit_edges_are_kept(world: StubWorld, folders: Folders) -> None:
    result = validate_prompt(_options(extra=-(2**63), seed=2**64 - 1), world.registry, folders)
    assert result.nodes["1"].literals["extra"] == -(2**63)
    assert result.nodes["1"].literals["seed"] == 2**64 - 1


def test_unknown_output_class_is_reported_before_no_outputs(world: StubWorld, folders: Folders) -> None:
    prompt = {"1": {"class_type": "StubInt", "inputs": {"value": 1}},
              "2": {"class_type": "NoSuchSave", "inputs": {"value": ["1", 0]}, "_meta": {"title": "Saver"}}}
    top, err = _errors(world, folders, prompt)
    assert isinstance(top, errors.UnknownNode) and top.node_id is None
    assert isinstance(err, errors.UnknownNode) and err.node_id == "2"
    assert "node 2 ('Saver')" in err.message and "NoSuchSave" in err.message
    assert err.message in top.message and err.extra_info["title"] == "Saver"


def test_null_class_type_names_node_and_title(world: StubWorld, folders: Folders) -> None:
    prompt = {"1": {"class_type": "StubInt", "inputs": {"value": 1}},
              "2": {"class_type": None, "inputs": {}, "_meta": {"title": "Mystery node"}}}
    [err] = _errors(world, folders, prompt)
    assert isinstance(err, errors.MalformedNode) and err.node_id == "2"
    assert "node 2 ('Mystery node')" in err.message and "class_type is null" in err.message


@pytest.mark.parametrize("link_id", [float("inf"), float("nan"), True, "x", 1.5, [1]])
def test_editor_link_id_that_is_not_a_whole_number_is_malformed(world: StubWorld, link_id: Any) -> None:
    workflow = {"nodes": [{"id": 1, "type": "StubInt", "widgets_values": [1]},
                          {"id": 2, "type": "StubShow", "inputs": [{"name": "value", "link": 1}]}],
                "links": [[link_id, 1, 0, 2, 0, "INT"]]}
    with pytest.raises(errors.ValidationFailed) as caught:
        ui_to_api(workflow, world.registry)
    [err] = caught.value.errors
    assert isinstance(err, errors.MalformedNode) and "link id" in err.message


def test_editor_link_ids_as_numbers_or_digit_strings_convert(world: StubWorld) -> None:
    workflow = {"nodes": [{"id": 1, "type": "StubInt", "widgets_values": [1]},
                          {"id": 2, "type": "StubShow", "inputs": [{"name": "value", "link": "7"}]}],
                "links": [[7.0, 1, 0, 2, 0, "INT"]]}
    assert ui_to_api(workflow, world.registry)["2"]["inputs"] == {"value": ["1", 0]}


def test_editor_unknown_node_names_id_and_title(world: StubWorld) -> None:
    workflow = {"nodes": [{"id": 4, "type": "FancySave", "title": "Final output", "widgets_values": []}],
                "links": []}
    with pytest.raises(errors.ValidationFailed) as caught:
        ui_to_api(workflow, world.registry)
    [err] = caught.value.errors
    assert isinstance(err, errors.UnknownNode) and err.node_id == "4"
    assert "node 4 ('Final output')" in err.message and "FancySave" in err.message
