"""A real third-party ComfyUI client, comfy-script (PyPI, comfy-script[runtime]==0.6.1), against Loom.

The client builds Python classes from ``/object_info``, queues EmptyImage -> ImageInvert ->
SaveImage through ``POST /prompt``, follows ``/ws`` and reads ``/history`` and ``/view``. It runs in
a subprocess: its runtime patches asyncio globally (nest_asyncio) on import.

comfy-script connects its websocket on a background thread after queueing, so a prompt that
finishes in milliseconds can end before it listens (a race in the client, not the protocol). The
test therefore holds the worker on another client's StubGate prompt until comfy-script's prompt is
queued and its websocket is connected, as happens with any real model load.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.api.conftest import LiveServer, chain_prompt

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy_script") is None,
                                reason="comfy-script[runtime] is not installed (pip install -e .[test])")

CLIENT = """
import json, sys
from comfy_script.runtime import load, Workflow
load(sys.argv[1])
from comfy_script.runtime.nodes import EmptyImage, ImageInvert, SaveImage
with Workflow(wait=True):
    image = EmptyImage(16, 12, 1, 0)
    image = ImageInvert(image)
    result = SaveImage(image, "comfy_script")
images = result.wait()
print("RESULT " + json.dumps({
    "sizes": [list(im.size) for im in images],
    "pixels": [list(im.convert("RGB").getpixel((3, 3))) for im in images],
}))
"""


def test_comfy_script_runs_a_workflow(server: LiveServer, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    server.controls.gate.clear()
    server.controls.entered.clear()
    server.queue_prompt(chain_prompt(3001, middle="StubGate", tag=uuid.uuid4().hex), client_id="other")
    assert server.controls.entered.wait(10)
    clients_before = server.hub.client_count
    proc = subprocess.Popen([sys.executable, str(script), server.url + "/"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (server.queue.pending() and server.hub.client_count > clients_before):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "comfy-script never queued its prompt and connected"
            time.sleep(0.05)
        server.controls.gate.set()
        out, err = proc.communicate(timeout=30)
    finally:
        server.controls.gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, out + err
    result = json.loads(line.removeprefix("RESULT "))
    assert result["sizes"] == [[16, 12]]
    assert result["pixels"] == [[255, 255, 255]]  # black, inverted
    saved = sorted(server.settings.output_dir.glob("comfy_script*.png"))
    assert len(saved) == 1
    history = server.get("/history").json()
    images = [img for entry in history.values() for out in entry["outputs"].values()
              for img in out.get("images", [])]
    assert {"filename": saved[0].name, "subfolder": "", "type": "output"} in images
