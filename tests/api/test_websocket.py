"""The websocket protocol: greeting, message order, caching, errors, interrupts, reconnects, previews."""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import websocket

from tests.api.conftest import TIMEOUT, LiveServer, chain_prompt, collect_until_done, recv_json


def without_status(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] != "status"]


def shape(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(type, node) per message: a readable sequence to compare."""
    out = []
    for m in without_status(messages):
        data = m["data"]
        out.append((m["type"], data.get("node", data.get("nodes"))))
    return out


def test_greeting_carries_sid(server: LiveServer) -> None:
    ws = server.ws("greet-me")
    try:
        assert recv_json(ws) == {"type": "status",
                                 "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "greet-me"}}
    finally:
        ws.close()
    anonymous = websocket.create_connection(f"ws://127.0.0.1:{server.port}/api/ws", timeout=TIMEOUT)
    try:
        sid = recv_json(anonymous)["data"]["sid"]
        assert isinstance(sid, str) and len(sid) >= 16
    finally:
        anonymous.close()


def test_message_order_for_a_prompt(server: LiveServer) -> None:
    client = uuid.uuid4().hex
    ws = server.ws(client)
    try:
        recv_json(ws)
        prompt_id = server.queue_prompt(chain_prompt(1001, middle="StubSteps", steps=3), client_id=client)
        messages = collect_until_done(ws, prompt_id)
    finally:
        ws.close()
    assert shape(messages) == [
        ("execution_start", None), ("execution_cached", []),
        ("executing", "1"), ("executing", "2"),
        ("progress", "2"), ("progress", "2"), ("progress", "2"),
        ("executing", "3"), ("executed", "3"), ("execution_success", None), ("executing", None),
    ]
    for m in without_status(messages):
        assert m["data"]["prompt_id"] == prompt_id
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    executing = next(m["data"] for m in messages if m["type"] == "executing")
    assert executing["display_node"] == "1"
    executed = next(m["data"] for m in messages if m["type"] == "executed")
    assert executed == {"node": "3", "display_node": "3", "output": {"text": ["1001"]}, "prompt_id": prompt_id}
    start = next(m["data"] for m in messages if m["type"] == "execution_start")
    assert isinstance(start["timestamp"], int)
    statuses = [(i, m["data"]["status"]["exec_info"]["queue_remaining"])
                for i, m in enumerate(messages) if m["type"] == "status"]
    assert any(remaining >= 1 for _, remaining in statuses), "a status broadcast when the prompt was queued"
    assert statuses[-1][1] == 0 and statuses[-1][0] < len(messages) - 1, "status 0 before the end marker"
    assert all("sid" not in m["data"] for m in messages if m["type"] == "status")


def test_fully_cached_rerun(server: LiveServer) -> None:
    client = uuid.uuid4().hex
    ws = server.ws(client)
    try:
        recv_json(ws)
        prompt = chain_prompt(1002)
        collect_until_done(ws, server.queue_prompt(prompt, client_id=client))
        prompt_id = server.queue_prompt(prompt, client_id=client)
        messages = collect_until_done(ws, prompt_id)
    finally:
        ws.close()
    assert shape(messages) == [
        ("execution_start", None), ("execution_cached", ["1", "2", "3"]),
        ("executed", "3"), ("execution_success", None), ("executing", None),
    ]


def test_execution_error_shape_and_server_keeps_serving(server: LiveServer) -> None:
    client = uuid.uuid4().hex
    ws = server.ws(client)
    try:
        recv_json(ws)
        prompt_id = server.queue_prompt(chain_prompt(1003, middle="StubFail"), client_id=client)
        messages = collect_until_done(ws, prompt_id)
        error = next(m["data"] for m in messages if m["type"] == "execution_error")
        assert set(error) == {"prompt_id", "node_id", "node_type", "executed", "exception_message",
                              "exception_type", "traceback", "current_inputs", "current_outputs", "timestamp"}
        assert error["node_id"] == "2" and error["node_type"] == "StubFail"
        assert "stub failure on purpose" in error["exception_message"]
        assert error["executed"] == ["1"] and isinstance(error["traceback"], list)
        assert "execution_success" not in [m["type"] for m in messages]
        entry = server.wait_history(prompt_id)
        assert entry["status"]["status_str"] == "error"
        ok_id = server.queue_prompt(chain_prompt(1004), client_id=client)
        assert "execution_success" in [m["type"] for m in collect_until_done(ws, ok_id)]
    finally:
        ws.close()


def test_interrupt_is_broadcast(server: LiveServer) -> None:
    owner, bystander = uuid.uuid4().hex, uuid.uuid4().hex
    ws_owner, ws_other = server.ws(owner), server.ws(bystander)
    server.controls.gate.clear()
    server.controls.entered.clear()
    try:
        recv_json(ws_owner)
        recv_json(ws_other)
        prompt_id = server.queue_prompt(chain_prompt(1005, middle="StubGate", tag=uuid.uuid4().hex),
                                        client_id=owner)
        assert server.controls.entered.wait(TIMEOUT)
        assert server.post("/interrupt", {}).status == 200
        messages = collect_until_done(ws_owner, prompt_id)
        interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
        assert interrupted["prompt_id"] == prompt_id and interrupted["node_id"] == "2"
        assert interrupted["node_type"] == "StubGate" and interrupted["executed"] == ["1"]
        seen = []
        while True:
            msg = recv_json(ws_other)
            seen.append(msg["type"])
            if msg["type"] == "execution_interrupted":
                break
        assert "executing" not in seen  # the bystander only gets broadcasts
    finally:
        server.controls.gate.set()
        ws_owner.close()
        ws_other.close()
        server.wait_idle()


def test_reconnect_replaces_socket_and_reports_current_node(server: LiveServer) -> None:
    client = uuid.uuid4().hex
    first = server.ws(client)
    server.controls.gate.clear()
    server.controls.entered.clear()
    try:
        recv_json(first)
        prompt_id = server.queue_prompt(chain_prompt(1006, middle="StubGate", tag=uuid.uuid4().hex),
                                        client_id=client)
        assert server.controls.entered.wait(TIMEOUT)
        second = server.ws(client)
        try:
            assert recv_json(second)["data"]["sid"] == client
            assert recv_json(second) == {"type": "executing",
                                         "data": {"node": "2", "display_node": "2", "prompt_id": prompt_id}}
            server.controls.gate.set()
            done = collect_until_done(second, prompt_id)
            assert ("executed", "3") in shape(done)
        finally:
            second.close()
        first.settimeout(0.3)
        leftovers = []
        try:
            while True:
                leftovers.append(recv_json(first))
        except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
            pass
        assert not [m for m in leftovers if m["type"] in ("executed", "execution_success")]
    finally:
        server.controls.gate.set()
        first.close()
        server.wait_idle()


def test_feature_flags_answer(server: LiveServer) -> None:
    ws = server.ws()
    try:
        recv_json(ws)
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert recv_json(ws) == {"type": "feature_flags", "data": {
            "supports_preview_metadata": True, "max_upload_size": server.settings.max_upload_bytes}}
        ws.send(json.dumps({"type": "feature_flags", "data": {}}))  # only the first message counts
        ws.send("not json at all")
        ws.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            recv_json(ws)
    finally:
        ws.close()


def test_a_deeply_nested_first_message_is_ignored(server: LiveServer) -> None:
    """json.loads raised RecursionError in the websocket handler, which dropped the client (issue 15)."""
    ws = server.ws("deep-nesting")
    try:
        recv_json(ws)  # status
        ws.send("[" * 20_000 + "]" * 20_000)
        prompt_id = server.queue_prompt(chain_prompt(901), client_id="deep-nesting")
        seen = collect_until_done(ws, prompt_id)
        assert seen[-1]["type"] == "executing" and seen[-1]["data"]["node"] is None
    finally:
        ws.close()


def _frames_until_done(ws: websocket.WebSocket, prompt_id: str) -> tuple[list[bytes], list[str]]:
    binary: list[bytes] = []
    texts: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_BINARY:
            binary.append(data)
            continue
        text = data.decode()
        texts.append(text)
        msg = json.loads(text)
        if msg["type"] == "executing" and msg["data"]["node"] is None and msg["data"]["prompt_id"] == prompt_id:
            return binary, texts
    raise AssertionError("prompt did not finish")


def test_no_binary_frames_by_default(server: LiveServer) -> None:
    client = uuid.uuid4().hex
    ws = server.ws(client, query="&previews=1")
    try:
        recv_json(ws)
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        recv_json(ws)
        prompt_id = server.queue_prompt(chain_prompt(1007, middle="StubPreview"), client_id=client)
        binary, _ = _frames_until_done(ws, prompt_id)
    finally:
        ws.close()
    assert binary == []


def test_previews_only_for_clients_that_ask(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(preview_method="latent2rgb")
    meta_ws, plain_ws, quiet_ws = live.ws("meta"), live.ws("plain", query="&previews=1"), live.ws("quiet")
    try:
        for ws in (meta_ws, plain_ws, quiet_ws):
            recv_json(ws)
        meta_ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert recv_json(meta_ws)["type"] == "feature_flags"
        results = {}
        for value, (name, ws) in enumerate((("meta", meta_ws), ("plain", plain_ws), ("quiet", quiet_ws))):
            prompt_id = live.queue_prompt(chain_prompt(value, middle="StubPreview"), client_id=name)
            results[name] = (_frames_until_done(ws, prompt_id)[0], prompt_id)
    finally:
        for ws in (meta_ws, plain_ws, quiet_ws):
            ws.close()
    (plain_frames, _) = results["plain"]
    assert len(plain_frames) == 1
    assert struct.unpack(">II", plain_frames[0][:8]) == (1, 1)
    assert plain_frames[0][8:10] == b"\xff\xd8"  # JPEG
    (meta_frames, meta_prompt) = results["meta"]
    assert len(meta_frames) == 1
    kind, size = struct.unpack(">II", meta_frames[0][:8])
    meta = json.loads(meta_frames[0][8:8 + size])
    assert kind == 4 and meta["node_id"] == "2" and meta["prompt_id"] == meta_prompt
    assert meta["image_type"] == "image/jpeg" and meta_frames[0][8 + size:][:2] == b"\xff\xd8"
    assert results["quiet"][0] == []


def test_compact_json_and_bytes_per_node(server: LiveServer) -> None:
    nodes = 300
    prompt: dict[str, Any] = {"1": {"class_type": "StubInt", "inputs": {"value": 1008}}}
    for i in range(2, nodes):
        prompt[str(i)] = {"class_type": "StubAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt[str(nodes)] = {"class_type": "StubShow", "inputs": {"value": [str(nodes - 1), 0]}}
    client = uuid.uuid4().hex
    ws = server.ws(client)
    try:
        recv_json(ws)
        prompt_id = server.queue_prompt(prompt, client_id=client)
        binary, texts = _frames_until_done(ws, prompt_id)
    finally:
        ws.close()
    assert binary == []
    total = sum(len(t.encode()) for t in texts)
    assert total < 300_000, total
    assert sum(1 for t in texts if '"executing"' in t) == nodes + 1
    for text in texts:
        assert ", " not in text and '": ' not in text, text


def test_dead_socket_does_not_disturb_others(server: LiveServer) -> None:
    dead = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId=dead", timeout=TIMEOUT)
    recv_json(dead)
    dead.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    dead.sock.close()  # abrupt reset, no close frame
    live_ws = server.ws()
    try:
        recv_json(live_ws)
        prompt_id = server.queue_prompt(chain_prompt(1009))  # no client_id: broadcast to everyone
        assert ("executed", "3") in shape(collect_until_done(live_ws, prompt_id))
        prompt_id = server.queue_prompt(chain_prompt(1010))
        assert ("executed", "3") in shape(collect_until_done(live_ws, prompt_id))
    finally:
        live_ws.close()


def _raw_ws_that_never_reads(port: int, client_id: str) -> socket.socket:
    """A websocket handshake over a socket with a tiny receive buffer, then silence."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in sock.recv(1024)
    return sock


def test_slow_client_is_dropped_without_blocking_anyone(make_server: Callable[..., LiveServer]) -> None:
    from engine.events import Executed

    live = make_server(hub_options={"outbox_bytes": 256 * 1024})
    slow = _raw_ws_that_never_reads(live.port, "slow")
    fast = live.ws("fast")
    try:
        recv_json(fast)
        sink = live.hub.sink_for("slow")
        blob = "x" * 2048
        started = time.monotonic()
        for i in range(4000):  # ~8 MB for a client that reads nothing
            sink.emit(Executed(node=str(i), display_node=str(i), output={"text": [blob]}, prompt_id="flood"))
        assert time.monotonic() - started < 5.0, "emitting must never wait for a socket"
        deadline = time.monotonic() + TIMEOUT
        while live.hub.is_connected("slow") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not live.hub.is_connected("slow"), "the stuck client was not dropped"
        prompt_id = live.queue_prompt(chain_prompt(1011), client_id="fast")
        assert ("executed", "3") in shape(collect_until_done(fast, prompt_id))
    finally:
        fast.close()
        slow.close()
