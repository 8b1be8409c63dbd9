"""Strict JSON in, valid JSON out: NaN/Infinity, overflowing numbers and lone surrogates are 400s naming
where they are, out-of-range numbers are 400s naming node and input, and nothing the server stores or
sends back is invalid JSON (issue 15: F1, F2, F3, F6, C2)."""

from __future__ import annotations

import gzip
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.jsonutil import StrictJsonError, dumps_compact, loads_strict
from engine.queue import PromptQueue
from tests.api.conftest import LiveServer
from tests.api.test_routes import assert_error_schema

JSON = {"Content-Type": "application/json"}


def post_raw(server: LiveServer, body: str, path: str = "/prompt") -> Any:
    """POST ``body`` (JSON text, escapes such as \\ud800 kept as written) and return the 400 body."""
    reply = server.request("POST", path, body=body.encode(), headers=JSON)
    assert reply.status == 400, reply.body
    body_json = loads_strict(reply.body)  # the error itself is strict JSON
    assert_error_schema(body_json)
    assert server.get("/prompt").status == 200
    return body_json


# --------------------------------------------------------------------------- F1: lone surrogates


def test_lone_surrogate_class_type_is_400_naming_the_field(server: LiveServer) -> None:
    body = post_raw(server, r'{"prompt":{"1":{"class_type":"\ud800","inputs":{}}}}')
    assert body["error"]["type"] == "invalid_json"
    assert body["error"]["extra_info"]["path"] == "$.prompt.1.class_type"
    assert "surrogate" in body["error"]["details"]


def test_lone_surrogate_client_id_is_not_called_a_duplicate(server: LiveServer) -> None:
    prompt = json.dumps({"1": {"class_type": "StubInt", "inputs": {"value": 1}},
                         "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}})
    body = post_raw(server, '{"client_id":"\\udc00x","prompt":' + prompt + "}")
    assert body["error"]["type"] == "invalid_json"
    assert body["error"]["extra_info"]["path"] == "$.client_id"


def test_lone_surrogate_in_a_key_and_on_other_routes(server: LiveServer) -> None:
    body = post_raw(server, r'{"extra_data":{"\udfff":1},"prompt":{}}')
    assert body["error"]["extra_info"]["path"] == "$.extra_data"
    post_raw(server, r'{"delete":["\ud800"]}', "/history")
    post_raw(server, r'{"delete":["\ud800"]}', "/queue")


@pytest.mark.parametrize("body", [b'{"prompt":{"1":{"class_type":"\xed\xa0\x80","inputs":{}}}}',
                                  '{"prompt":{"1":{"class_type":"\\ud800","inputs":{}}}}'.encode("utf-16"),
                                  '{"prompt":{"\\uDBFF":{}}}'.encode("utf-32-le")])
def test_surrogates_in_raw_bytes_or_other_encodings_are_refused(server: LiveServer, body: bytes) -> None:
    reply = server.request("POST", "/prompt", body=body, headers=JSON)
    assert reply.status == 400, reply.body
    assert_error_schema(loads_strict(reply.body), "invalid_json")
    assert server.get("/prompt").status == 200


def test_surrogate_pair_escape_is_valid_text(server: LiveServer) -> None:
    prompt = {"1": {"class_type": "StubInt", "inputs": {"value": 5}},
              "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}}
    body = '{"client_id":"\\ud83d\\ude00","prompt":' + json.dumps(prompt) + "}"
    reply = server.request("POST", "/prompt", body=body.encode(), headers=JSON)
    assert reply.status == 200, reply.body
    entry = server.wait_history(reply.json()["prompt_id"])
    assert entry["prompt"][3]["client_id"] == "\U0001f600"


@pytest.mark.parametrize("path", ["/prompt", "/history", "/interrupt"])
def test_body_that_is_not_its_content_encoding_is_400(server: LiveServer, path: str) -> None:
    reply = server.request("POST", path, body=b'{"max_items": true}',
                           headers={**JSON, "Content-Encoding": "gzip"})
    assert reply.status == 400, reply.body
    assert_error_schema(reply.json(), "invalid_body")
    assert server.get("/prompt").status == 200


def test_gzip_body_is_read(server: LiveServer) -> None:
    body = gzip.compress(json.dumps({"prompt": {"1": {"class_type": "StubInt", "inputs": {"value": 1}}}}).encode())
    reply = server.request("POST", "/prompt", body=body, headers={**JSON, "Content-Encoding": "gzip"})
    assert reply.status == 400 and reply.json()["error"]["type"] == "prompt_no_outputs", reply.body


# --------------------------------------------------------------------------- F2, F6: NaN and Infinity


def test_infinity_link_id_in_editor_format_is_400(server: LiveServer) -> None:
    body = post_raw(server, '{"prompt":{"nodes":[],"links":[[Infinity,1,0,2,0,"IMAGE"]]}}')
    assert body["error"]["type"] == "invalid_json"
    assert body["error"]["extra_info"]["path"] == "$.prompt.links[0][0]"


def test_nan_and_infinity_are_refused_and_history_stays_json(server: LiveServer) -> None:
    before = server.get("/history").body
    body = post_raw(server, '{"extra_data":{"v":NaN},"prompt":{"1":{"class_type":"EmptyImage","inputs":'
                    '{"width":8,"height":8,"batch_size":1,"color":0,"junk":Infinity}},"2":{"class_type":'
                    '"SaveImage","inputs":{"images":["1",0],"filename_prefix":"nan"}}}}')
    assert body["error"]["type"] == "invalid_json"
    assert body["error"]["extra_info"]["path"] in {"$.extra_data.v", "$.prompt.1.inputs.junk"}
    assert "NaN" in body["error"]["details"] or "Infinity" in body["error"]["details"]
    server.wait_idle()
    assert server.get("/history").body == before
    loads_strict(server.get("/history").body)


@pytest.mark.parametrize("number", ["-Infinity", "1e400", "-1E+999", "9" * 400 + ".5"])
def test_non_finite_numbers_are_refused(server: LiveServer, number: str) -> None:
    body = post_raw(server, '{"prompt":{"1":{"class_type":"StubInt","inputs":{"value":' + number + "}}}}")
    assert body["error"]["extra_info"]["path"] == "$.prompt.1.inputs.value"


def test_dumps_compact_writes_non_finite_floats_as_null() -> None:
    value = {"a": [math.nan, 1.5, (math.inf, -math.inf)], "b": {"c": float("nan")}, "d": "x"}
    text = dumps_compact(value)
    assert text == '{"a":[null,1.5,[null,null]],"b":{"c":null},"d":"x"}'
    assert loads_strict(text) == {"a": [None, 1.5, [None, None]], "b": {"c": None}, "d": "x"}


def test_dumps_compact_writes_lone_surrogates_as_replacement_characters() -> None:
    text = dumps_compact({"name": "a\udcff.png", "\ud800": ["ok \U0001f600"]})
    assert text == '{"name":"a\ufffd.png","\ufffd":["ok \U0001f600"]}'
    text.encode("utf-8")  # would raise UnicodeEncodeError with the surrogates kept


def test_history_with_a_nan_output_is_stored_as_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    queue = PromptQueue(path)
    try:
        queue.put("p1", {"1": {"class_type": "X", "inputs": {}}}, {}, ["1"])
        item = queue.get(timeout=1)
        assert item is not None
        queue.finish("p1", outputs={"1": {"score": [math.nan, 0.5]}}, status={"status_str": "success"})
        entry = queue.history_entry("p1")
    finally:
        queue.close()
    with sqlite3.connect(path) as db:
        [(text,)] = db.execute("SELECT entry FROM history").fetchall()
    assert loads_strict(text)["outputs"] == {"1": {"score": [None, 0.5]}}
    assert entry is not None and entry["outputs"] == {"1": {"score": [None, 0.5]}}


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_what_dumps_compact_writes_loads_strict_reads(value: Any) -> None:
    """Any value, NaN and surrogates included, is written as text that is strict JSON and UTF-8."""
    text = dumps_compact(value)
    loads_strict(text.encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_loads_strict_fails_only_with_value_error(raw: bytes) -> None:
    try:
        loads_strict(raw)
    except ValueError:
        pass


def test_loads_strict_names_the_path() -> None:
    with pytest.raises(StrictJsonError) as caught:
        loads_strict('{"a":[1,{"b":NaN}]}')
    assert caught.value.path == "$.a[1].b"
    with pytest.raises(json.JSONDecodeError):
        loads_strict("{nope")
    with pytest.raises(StrictJsonError) as caught:
        loads_strict('{"k":["ok","\ud800"]}')  # a str holding the surrogate itself, not an escape
    assert caught.value.path == "$.k[1]"
    assert loads_strict('{"a":1e300,"b":"\\\\ud800 is text"}') == {"a": 1e300, "b": "\\ud800 is text"}


# --------------------------------------------------------------------------- F3: numbers out of range


def _scale_by(value: str) -> str:
    return ('{"prompt":{"1":{"class_type":"EmptyImage","inputs":{"width":8,"height":8,"batch_size":1,"color":0}},'
            '"2":{"class_type":"ImageScaleBy","inputs":{"image":["1",0],"upscale_method":"nearest-exact",'
            '"scale_by":' + value + '}},"3":{"class_type":"SaveImage","inputs":{"images":["2",0],'
            '"filename_prefix":"big"}}}}')


@pytest.mark.parametrize("value", ["1" + "0" * 399, '"' + "9" * 400 + '"', "-" + "7" * 400])
def test_huge_number_in_a_float_input_is_400_naming_node_and_input(server: LiveServer, value: str) -> None:
    body = post_raw(server, _scale_by(value))
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    [error] = body["node_errors"]["2"]["errors"]
    assert error["extra_info"]["input_name"] == "scale_by"
    assert "node 2 (ImageScaleBy) input 'scale_by'" in error["details"]
    assert len(error["details"]) < 400


@pytest.mark.parametrize("value", [str(10**400), str(2**64), str(-(2**63) - 1)])
def test_int_beyond_64_bits_is_400_naming_node_and_input(server: LiveServer, value: str) -> None:
    body = post_raw(server, '{"prompt":{"1":{"class_type":"StubInt","inputs":{"value":1}},'
                    '"2":{"class_type":"StubAdd","inputs":{"a":["1",0],"b":' + value + '}},'
                    '"3":{"class_type":"StubShow","inputs":{"value":["2",0]}}}}')
    [error] = body["node_errors"]["2"]["errors"]
    assert error["extra_info"]["input_name"] == "b" and "out of range" in error["details"]
    assert "node 2 (StubAdd) input 'b'" in error["details"]


# --------------------------------------------------------------------------- C2: unknown output classes


def test_unknown_output_class_is_named_not_no_outputs(server: LiveServer) -> None:
    reply = server.post("/prompt", {"prompt": {
        "1": {"class_type": "StubInt", "inputs": {"value": 1}},
        "2": {"class_type": "FancySaveImage", "inputs": {"value": ["1", 0]}, "_meta": {"title": "My saver"}}}})
    assert reply.status == 400
    body = reply.json()
    assert_error_schema(body, "invalid_prompt")
    assert body["error"]["message"] == "Unknown node type"
    assert "node 2 ('My saver')" in body["error"]["details"] and "FancySaveImage" in body["error"]["details"]
    [error] = body["node_errors"]["2"]["errors"]
    assert body["node_errors"]["2"]["class_type"] == "FancySaveImage"
    assert error["extra_info"]["title"] == "My saver"


def test_null_class_type_names_node_and_title(server: LiveServer) -> None:
    reply = server.post("/prompt", {"prompt": {
        "1": {"class_type": "StubInt", "inputs": {"value": 1}},
        "7": {"class_type": None, "inputs": {"value": ["1", 0]}, "_meta": {"title": "Custom preview"}}}})
    assert reply.status == 400
    body = reply.json()
    assert_error_schema(body)
    [error] = body["node_errors"]["7"]["errors"]
    assert "node 7 ('Custom preview')" in error["details"] and "null" in error["details"]
    assert "node 7 ('Custom preview')" in body["error"]["details"]
