"""Text-to-image through the real server on a tiny checkpoint file: HTTP, websocket, /view, previews."""

from __future__ import annotations

import io
import struct
import uuid
from pathlib import Path
from typing import Any

import websocket
from PIL import Image

from engine.pngmeta import read_png_metadata
from tests.api.conftest import LiveServer, collect_until_done
from tests.fixtures.tiny_checkpoints import build_checkpoint


def txt2img_prompt(ckpt: str, steps: int = 3) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 42, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "tiny"}},
    }


def _add_checkpoint(live: LiveServer, name: str) -> None:
    folder = Path(live.settings.models_dirs[0]) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    build_checkpoint(folder / name, "sd1")


def test_txt2img_over_http_and_websocket(make_server: Any) -> None:
    live: LiveServer = make_server()
    listed = live.get("/object_info/CheckpointLoaderSimple").json()
    assert listed["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == []
    _add_checkpoint(live, "tiny.safetensors")  # the combo list refreshes without a restart
    listed = live.get("/api/object_info/CheckpointLoaderSimple").json()
    assert listed["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["tiny.safetensors"]
    assert live.get("/models/checkpoints").json() == ["tiny.safetensors"]

    client = uuid.uuid4().hex
    ws = live.ws(client)
    prompt_id = live.queue_prompt(txt2img_prompt("tiny.safetensors", steps=3), client_id=client)
    messages = collect_until_done(ws, prompt_id)
    ws.close()
    types = [m["type"] for m in messages]
    assert "execution_success" in types and "execution_error" not in types
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")]
    [executed] = [m["data"] for m in messages if m["type"] == "executed"]
    [image] = executed["output"]["images"]
    assert image["filename"] == "tiny_00001_.png" and image["type"] == "output"

    reply = live.get(f"/view?filename={image['filename']}&type=output&subfolder={image['subfolder']}")
    assert reply.status == 200
    picture = Image.open(io.BytesIO(reply.body))
    assert picture.size == (64, 48) and picture.mode == "RGB"
    assert read_png_metadata(reply.body)["prompt"]["3"]["class_type"] == "KSampler"
    history = live.get(f"/history/{prompt_id}").json()[prompt_id]
    assert history["status"]["status_str"] == "success"
    assert history["outputs"]["9"]["images"] == [image]


def test_previews_only_for_clients_that_ask(make_server: Any) -> None:
    live: LiveServer = make_server(preview_method="latent2rgb")
    _add_checkpoint(live, "tiny.safetensors")
    asking, silent = uuid.uuid4().hex, uuid.uuid4().hex
    ws_asking = live.ws(asking, "&previews=1")
    ws_silent = live.ws(silent)
    prompt_id = live.queue_prompt(txt2img_prompt("tiny.safetensors", steps=2), client_id=asking)
    frames: list[bytes] = []
    while True:
        opcode, data = ws_asking.recv_data()
        if opcode == 2:
            frames.append(data)
        elif b'"executing"' in data and b'"node":null' in data and prompt_id.encode() in data:
            break
    assert len(frames) == 2
    for frame in frames:
        event_type, image_type = struct.unpack(">II", frame[:8])
        assert (event_type, image_type) == (1, 1)
        assert Image.open(io.BytesIO(frame[8:])).format == "JPEG"
    ws_silent.settimeout(0.5)
    silent_frames = []
    try:
        while True:
            opcode, data = ws_silent.recv_data()
            if opcode == 2:
                silent_frames.append(data)
    except websocket.WebSocketTimeoutException:
        pass  # nothing more arrived
    assert silent_frames == []
    ws_asking.close()
    ws_silent.close()
