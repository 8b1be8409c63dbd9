"""Property tests: the pure functions that parse untrusted input fail only with their documented errors.

Derandomized (the same examples every run) and without deadlines, so they are reproducible and fast.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import LoomError, PathOutsideRoot, ValidationFailed
from engine.folders import Folders, join_inside, path_problem, resolve_inside
from engine.pngmeta import PNG_SIGNATURE, read_png_metadata
from engine.validate import validate_prompt
from engine.workflow import is_ui_workflow, parse_api_prompt, ui_to_api
from engine.workflow_layout import api_to_ui
from tests.support.stub_nodes import registry_with_stubs

FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

REGISTRY = registry_with_stubs()
CLASS_NAMES = ["StubInt", "StubAdd", "StubShow", "StubSleep", "EmptyLatentImage", "LatentMultiply", "SaveLatent",
               "KSampler", "CheckpointLoaderSimple", "SaveImage", "NoSuchNode", ""]
INPUT_NAMES = ["value", "a", "b", "seconds", "samples", "multiplier", "width", "height", "batch_size",
               "filename_prefix", "seed", "steps", "cfg", "ckpt_name", "images", "x"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
node_ids = st.sampled_from(["1", "2", "3", "4", "x"]) | st.text(max_size=4)
links = (st.tuples(st.sampled_from(["1", "2", "3"]), st.integers(-3, 3)).map(list)
         | st.lists(node_ids | st.integers(-2, 5) | scalars, min_size=2, max_size=2))
input_values = scalars | links | json_values
api_nodes = st.fixed_dictionaries(
    {"class_type": st.sampled_from(CLASS_NAMES) | scalars},
    optional={"inputs": st.dictionaries(st.sampled_from(INPUT_NAMES) | st.text(max_size=6), input_values,
                                        max_size=6) | scalars,
              "_meta": json_values})
api_prompts = st.dictionaries(node_ids, api_nodes | json_values, max_size=6) | json_values

ui_links = st.lists(st.lists(st.integers(-1, 6) | scalars, max_size=7) | scalars, max_size=6)
ui_nodes = st.fixed_dictionaries(
    {"id": st.integers(-1, 6) | scalars, "type": st.sampled_from(CLASS_NAMES) | scalars},
    optional={"inputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(INPUT_NAMES) | scalars},
                                                       optional={"link": st.integers(-1, 6) | scalars,
                                                                 "widget": json_values}), max_size=4) | scalars,
              "outputs": st.lists(json_values, max_size=3) | scalars,
              "widgets_values": st.lists(scalars, max_size=6) | json_values,
              "mode": st.integers(0, 4) | scalars})
ui_workflows = (st.fixed_dictionaries({"nodes": st.lists(ui_nodes | json_values, max_size=5), "links": ui_links},
                                      optional={"definitions": json_values, "extra": json_values,
                                                "groups": json_values})
                | json_values)


@FAST
@given(json_values | ui_workflows)
def test_is_ui_workflow_is_total(value: Any) -> None:
    assert isinstance(is_ui_workflow(value), bool)


@FAST
@given(ui_workflows)
def test_ui_to_api_fails_only_with_validation_failed(workflow: Any) -> None:
    try:
        prompt = ui_to_api(workflow, REGISTRY)
    except ValidationFailed:
        return
    assert isinstance(prompt, dict)
    for node_id, node in prompt.items():
        assert isinstance(node_id, str) and isinstance(node["class_type"], str)
        assert isinstance(node["inputs"], dict)


@FAST
@given(api_prompts)
def test_parse_api_prompt_fails_only_with_validation_failed(prompt: Any) -> None:
    try:
        parsed = parse_api_prompt(prompt)
    except ValidationFailed as exc:
        assert exc.errors
        return
    assert parsed and all(isinstance(node["inputs"], dict) for node in parsed.values())


@FAST
@given(api_prompts)
def test_validate_prompt_fails_only_with_validation_failed(tmp_path_factory: Any, prompt: Any) -> None:
    folders = _folders(tmp_path_factory)
    try:
        validated = validate_prompt(prompt, REGISTRY, folders)
    except ValidationFailed as exc:
        assert exc.errors
        return
    assert validated.outputs
    assert set(validated.outputs) <= set(validated.nodes)


def _typed_node(class_type: str) -> st.SearchStrategy[dict[str, Any]]:
    """A node of a real class whose declared inputs get links (some with bad slots) or odd values."""
    cls = REGISTRY.get(class_type)
    names = [spec.name for spec in cls.inputs] if cls is not None else ["value"]
    value = st.tuples(st.sampled_from(["1", "2", "3"]), st.integers(-3, 3)).map(list) | scalars
    return st.fixed_dictionaries({"class_type": st.just(class_type),
                                  "inputs": st.dictionaries(st.sampled_from(names), value, max_size=len(names))})


typed_prompts = st.dictionaries(st.sampled_from(["1", "2", "3"]),
                                st.sampled_from(CLASS_NAMES[:7]).flatmap(_typed_node), min_size=1, max_size=3)


@FAST
@given(api_prompts | typed_prompts)
def test_api_to_ui_fails_only_with_validation_failed(prompt: Any) -> None:
    try:
        workflow = api_to_ui(prompt, REGISTRY)
    except ValidationFailed as exc:
        assert exc.errors
        return
    assert is_ui_workflow(workflow)


_FOLDERS: dict[str, Folders] = {}


def _folders(tmp_path_factory: Any) -> Folders:
    if "f" not in _FOLDERS:
        root = Path(tmp_path_factory.mktemp("fuzz-folders"))
        folders = Folders(root / "input", root / "output", root / "temp", (root / "models",))
        folders.ensure()
        _FOLDERS["f"] = folders
    return _FOLDERS["f"]


path_parts = st.text(alphabet=st.sampled_from(list("ab./\\:%2efc0\x00~ ")) | st.characters(), max_size=16)


@FAST
@given(st.lists(path_parts, max_size=4))
def test_resolve_inside_never_leaves_the_root(tmp_path_factory: Any, parts: list[str]) -> None:
    root = _folders(tmp_path_factory).input_dir.resolve()
    try:
        path = resolve_inside(root, *parts)
    except PathOutsideRoot:
        return
    except ValueError:  # e.g. a name the OS cannot represent; still never a path outside
        return
    assert path == root or root in path.parents
    for part in parts:
        assert path_problem(part) is None


@FAST
@given(st.lists(path_parts, max_size=4))
def test_join_inside_never_names_a_path_outside_the_root(tmp_path_factory: Any, parts: list[str]) -> None:
    """Model names: checked lexically (links the folder holds are followed on purpose), never '..' out."""
    root = _folders(tmp_path_factory).input_dir.resolve()
    try:
        path = join_inside(root, *parts)
    except PathOutsideRoot:
        return
    normalized = Path(os.path.normpath(path))
    assert normalized == root or root in normalized.parents
    for part in parts:
        assert path_problem(part) is None


@FAST
@given(path_parts, path_parts, st.sampled_from(["input", "output", "temp"]))
def test_file_path_never_leaves_its_folder(tmp_path_factory: Any, filename: str, subfolder: str, kind: str) -> None:
    folders = _folders(tmp_path_factory)
    root = folders.root(kind).resolve()
    try:
        path = folders.file_path(kind, filename, subfolder)
    except (PathOutsideRoot, ValueError):
        return
    assert path == root or root in path.parents


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


text_chunks = st.builds(
    _chunk, st.sampled_from([b"tEXt", b"zTXt", b"iTXt", b"IEND", b"IHDR"]),
    st.one_of(st.binary(max_size=64),
              st.builds(lambda k, v: k + b"\x00" + v, st.sampled_from([b"prompt", b"workflow", b"x"]),
                        st.binary(max_size=48)),
              st.builds(lambda k, v: k + b"\x00\x00" + zlib.compress(v),
                        st.sampled_from([b"prompt", b"workflow"]), st.binary(max_size=48)),
              st.builds(lambda k, v: k + b"\x00\x01\x00\x00\x00" + zlib.compress(v),
                        st.sampled_from([b"prompt", b"workflow"]), st.binary(max_size=48))))
png_like = st.one_of(st.binary(max_size=200),
                     st.builds(lambda chunks, tail: PNG_SIGNATURE + b"".join(chunks) + tail,
                               st.lists(text_chunks, max_size=5), st.binary(max_size=16)))


@FAST
@given(png_like)
def test_read_png_metadata_fails_only_with_value_error(data: bytes) -> None:
    try:
        found = read_png_metadata(data, max_text_bytes=1024)
    except ValueError:
        assert not data.startswith(PNG_SIGNATURE)
        return
    assert set(found) <= {"prompt", "workflow"}


def test_typed_errors_are_loom_errors() -> None:
    assert issubclass(ValidationFailed, LoomError) and issubclass(PathOutsideRoot, LoomError)
