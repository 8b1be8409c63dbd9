"""``--preview-method taesd`` on a real server: a prompt on the demo model sends ComfyUI's binary preview
frames (type 1 PREVIEW_IMAGE, image type 1 JPEG, then the JPEG) decoded by the shipped TAESD to the
websocket client that asked for previews, at the image's size."""

from __future__ import annotations

import io
import struct
import uuid
from typing import Any

import pytest
from PIL import Image

from tests.api.conftest import TIMEOUT, LiveServer
from tests.api.test_txt2img import txt2img_prompt
from tests.nodes.sd_workflow import DEMO_CHECKPOINT, DEMO_MODELS, require_demo_model


def test_taesd_previews_reach_the_client_that_asked(make_server: Any) -> None:
    require_demo_model()
    if not (DEMO_MODELS / "vae_approx" / "taesd_decoder.safetensors").is_file():
        pytest.skip("models/vae_approx/taesd_decoder.safetensors is missing (python -m tools.train_tiny_taesd)")
    live: LiveServer = make_server(preview_method="taesd", models_dirs=(DEMO_MODELS,))
    client = uuid.uuid4().hex
    ws = live.ws(client, "&previews=1")
    ws.settimeout(TIMEOUT * 3)
    try:
        prompt_id = live.queue_prompt(txt2img_prompt(DEMO_CHECKPOINT, steps=3), client_id=client)
        frames: list[bytes] = []
        while True:
            opcode, data = ws.recv_data()
            if opcode == 2:
                frames.append(data)
            elif b'"execution_error"' in data:
                raise AssertionError(data.decode())
            elif b'"executing"' in data and b'"node":null' in data and prompt_id.encode() in data:
                break
    finally:
        ws.close()
    assert len(frames) == 3  # one per step
    for frame in frames:
        assert struct.unpack(">II", frame[:8]) == (1, 1)  # PREVIEW_IMAGE, JPEG
        image = Image.open(io.BytesIO(frame[8:]))
        assert image.format == "JPEG" and image.size == (64, 48)  # TAESD decodes at the image's size
    last = Image.open(io.BytesIO(frames[-1][8:])).convert("RGB")
    assert max(hi - lo for lo, hi in last.getextrema()) > 40  # a picture, not a flat colour
