"""SaveImageWebsocket over a real server on loopback: ComfyUI's binary frame layout and the PNG pixels,
delivered to the client that queued the prompt even though it never asked for previews."""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
from typing import Any

import numpy as np
import websocket
from PIL import Image

from engine.images import to_8bit
from tests.api.conftest import TIMEOUT, LiveServer, recv_json

PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, PNG = 1, 4, 2


def _prompt(name: str) -> dict[str, Any]:
    """LoadImage -> (itself, inverted) as a batch of two -> SaveImageWebsocket."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "9": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["3", 0]}},
    }


def _picture(server: LiveServer) -> tuple[str, np.ndarray]:
    pixels = np.random.default_rng(5).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    name = f"ws_{uuid.uuid4().hex[:8]}.png"
    Image.fromarray(pixels).save(server.settings.input_dir / name)
    return name, pixels


def _binary_until_done(ws: websocket.WebSocket, prompt_id: str) -> list[bytes]:
    frames: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_BINARY:
            frames.append(bytes(data))
            continue
        msg = json.loads(data)
        if msg["type"] == "execution_error":
            raise AssertionError(msg["data"]["exception_message"])
        if msg["type"] == "executing" and msg["data"]["node"] is None and msg["data"]["prompt_id"] == prompt_id:
            return frames
    raise AssertionError("the prompt did not finish")


def _png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def test_frames_reach_the_queueing_client_without_previews(server: LiveServer) -> None:
    assert server.settings.preview_method == "none"  # previews are off, the node's images still go out
    name, pixels = _picture(server)
    client, other = uuid.uuid4().hex, uuid.uuid4().hex
    ws, bystander = server.ws(client), server.ws(other)
    try:
        recv_json(ws), recv_json(bystander)
        prompt_id = server.queue_prompt(_prompt(name), client_id=client)
        frames = _binary_until_done(ws, prompt_id)
        rerun = _binary_until_done(ws, server.queue_prompt(_prompt(name), client_id=client))
        bystander.settimeout(0.3)
        leaked = []
        try:
            while True:
                opcode, data = bystander.recv_data()
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    leaked.append(data)
        except websocket.WebSocketTimeoutException:
            pass
    finally:
        ws.close()
        bystander.close()
    assert len(frames) == 2 and leaked == []
    inverted = to_8bit(1.0 - pixels.astype(np.float32) / np.float32(255.0))  # ComfyUI's truncation: 86.99.. -> 86
    for frame, expected in zip(frames, (pixels, inverted), strict=True):
        assert struct.unpack(">II", frame[:8]) == (PREVIEW_IMAGE, PNG)
        assert frame[8:16] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(_png_pixels(frame[8:]), expected)
    assert len(rerun) == 2  # runs every time, even with every input unchanged


def test_clients_with_preview_metadata_get_type_4_frames(server: LiveServer) -> None:
    name, pixels = _picture(server)
    client = uuid.uuid4().hex
    ws = server.ws(client)
    try:
        recv_json(ws)
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert recv_json(ws)["type"] == "feature_flags"
        prompt_id = server.queue_prompt(_prompt(name), client_id=client)
        frames = _binary_until_done(ws, prompt_id)
    finally:
        ws.close()
    assert len(frames) == 2
    kind, size = struct.unpack(">II", frames[0][:8])
    meta = json.loads(frames[0][8:8 + size])
    assert kind == PREVIEW_IMAGE_WITH_METADATA
    assert meta["node_id"] == "9" and meta["prompt_id"] == prompt_id and meta["image_type"] == "image/png"
    assert np.array_equal(_png_pixels(frames[0][8 + size:]), pixels)
