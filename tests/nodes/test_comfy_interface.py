"""Each node's /object_info entry against a table of ComfyUI's interface for it.

The tables live in tests/nodes/comfy_interface/<group>.py, one ``EXPECTED`` dict per module, written
from ComfyUI's node definitions (facts: names, input order, types, defaults, limits, outputs). Each
entry has ComfyUI's /object_info shape, trimmed to what is pinned::

    "ImageBlur": {
        "required": [("image", "IMAGE", {}), ("blur_radius", "INT", {"default": 1, "min": 1, "max": 31})],
        "optional": [],
        "output": ["IMAGE"],
        "output_name": ["IMAGE"],          # optional; defaults to output
        "output_is_list": [False],         # optional; defaults to all False
        "output_node": False,              # optional
    }

A COMBO's type is its list of choices; ``FILES`` stands for a combo of files (its choices depend
on the folders). Every option a table names must match exactly; options it omits are not checked.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest

import tests.nodes.comfy_interface as tables
from engine.folders import Folders
from engine.registry import NodeRegistry
from nodes import register_builtin_nodes

FILES = "FILES"


def _expected() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for module in pkgutil.iter_modules(tables.__path__):
        table = importlib.import_module(f"{tables.__name__}.{module.name}").EXPECTED
        overlap = set(found) & set(table)
        assert not overlap, f"{module.name} repeats {sorted(overlap)}"
        found.update(table)
    return found


EXPECTED = _expected()


@pytest.fixture(scope="module")
def object_info(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("interface")
    folders = Folders(input_dir=root / "input", output_dir=root / "output", temp_dir=root / "temp",
                      model_roots=())
    folders.ensure()
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry.object_info(folders)


def _check_inputs(name: str, section: str, expected: list[tuple[str, Any, dict[str, Any]]],
                  actual: dict[str, list[Any]], order: list[str]) -> None:
    assert order == [item[0] for item in expected], f"{name}: {section} inputs (names and order)"
    for input_name, kind, options in expected:
        got_kind, got_options = actual[input_name][0], actual[input_name][1]
        where = f"{name}.{input_name}"
        if kind == FILES:
            assert isinstance(got_kind, list), f"{where} should be a file combo"
        else:
            assert got_kind == kind, f"{where}: type {got_kind!r}, ComfyUI has {kind!r}"
        for key, value in options.items():
            assert key in got_options, f"{where}: option {key!r} missing (ComfyUI: {value!r})"
            assert got_options[key] == value, f"{where}: {key} is {got_options[key]!r}, ComfyUI has {value!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_node_matches_comfyui_interface(name: str, object_info: dict[str, Any]) -> None:
    assert name in object_info, f"{name} is not registered"
    info, expected = object_info[name], EXPECTED[name]
    inputs, order = info["input"], info["input_order"]
    _check_inputs(name, "required", expected["required"], inputs["required"], order["required"])
    optional = expected.get("optional", [])
    _check_inputs(name, "optional", optional, inputs.get("optional", {}), order.get("optional", []))
    assert info["output"] == expected["output"], f"{name}: outputs"
    assert info["output_name"] == expected.get("output_name", expected["output"]), f"{name}: output names"
    assert info["output_is_list"] == expected.get("output_is_list", [False] * len(expected["output"]))
    if "output_node" in expected:
        assert info["output_node"] == expected["output_node"], f"{name}: output_node"
