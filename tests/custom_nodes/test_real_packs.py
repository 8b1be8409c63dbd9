"""Real ComfyUI custom node packs, installed from PyPI at test time, load unchanged into Loom and run a node each.

Few packs are published on PyPI (most ship by git clone); these three are pure Python, each wheel being the
pack's folder as it sits in ComfyUI's custom_nodes/:

* comfyui-tooling-nodes 0.1.0 (Acly, the Krita AI plugin's nodes): base64 image loading, crop, mask, websocket
  image sending; its import registers an HTTP route and imports comfy.utils, comfy.supported_models and
  comfy.model_detection;
* comfyui-ib-customnodes 0.2.3 (Chaoses-Ib): PIL image conversions and loading images by path (folder_paths);
* civitai-comfy-nodes 0.2.0 (Civitai): checkpoint and LoRA loaders that wrap ComfyUI's core loader classes from
  ``nodes`` and read folder_paths.folder_names_and_paths at import.

Skipped, saying why, when PyPI cannot be reached.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from PIL import Image

from engine.custom_nodes.packs import load_packs
from engine.folders import Folders
from engine.registry import NodeRegistry
from tests.api.conftest import LiveServer, start_live_server

REPO = Path(__file__).resolve().parents[2]
REAL_PACKS = {"comfyui-tooling-nodes==0.1.0": ("comfyui_tooling_nodes", 5),
              "comfyui-ib-customnodes==0.2.3": ("ComfyUI_Ib_CustomNodes", 4),
              "civitai-comfy-nodes==0.2.0": ("civitai_comfy_nodes", 2)}
DEMO = REPO / "models" / "checkpoints" / "tiny-shapes.safetensors"


def install_packs(target: Path) -> None:
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--disable-pip-version-check",
               "--target", str(target), *REAL_PACKS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        pytest.skip(f"could not install the real packs from PyPI: {done.stderr.strip()[-300:]}")


def seed_civitai_history(pack: Path) -> None:
    """The pack looks a checkpoint's hash up in its download history before asking civitai.com: record the demo
    model there, so the test never reaches the network."""
    digest = hashlib.sha256(DEMO.read_bytes()).hexdigest().upper()
    history = {"1": [{"id": 2, "files": [{"hashes": {"SHA256": digest}, "model_type": "Checkpoint"}]}]}
    (pack / "download_history.json").write_text(json.dumps(history))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("loom-real-packs")
    custom = root / "custom_nodes"
    install_packs(custom)
    seed_civitai_history(custom / "civitai_comfy_nodes")
    (root / "models" / "loras").mkdir(parents=True)
    folders = Folders(root / "input", root / "output", root / "temp", (REPO / "models", root / "models"))

    def packs(registry: NodeRegistry) -> None:
        load_packs([custom], registry, folders)

    server = start_live_server(root, extra_nodes=packs, models_dirs=(REPO / "models", root / "models"))
    yield server
    server.stop()


def png_base64(size: tuple[int, int]) -> str:
    picture = Image.new("RGBA", size, (255, 0, 0, 255))
    picture.putpixel((0, 0), (0, 0, 255, 0))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def binary_frames_until_done(ws: websocket.WebSocket, prompt_id: str) -> list[bytes]:
    frames: list[bytes] = []
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_BINARY:
            frames.append(data)
            continue
        message = json.loads(data)
        if message["type"] == "executing" and message["data"].get("node") is None \
                and message["data"].get("prompt_id") == prompt_id:
            return frames


def test_every_real_pack_loads_all_its_nodes(live: LiveServer) -> None:
    reports = {r["name"]: r for r in live.get("/loom/custom_nodes").json()}
    for module, count in REAL_PACKS.values():
        report = reports[module]
        assert report["status"] == "loaded", report["error"]
        assert len(report["nodes"]) == count and report["skipped"] == {}, report
    info = live.get("/object_info").json()
    assert info["ETN_CropImage"]["python_module"] == "custom_nodes.comfyui_tooling_nodes"
    checkpoints = info["CivitAI_Checkpoint_Loader"]["input"]["required"]["ckpt_name"][0]
    assert checkpoints[0] == "none" and DEMO.name in checkpoints


def test_tooling_nodes_load_crop_and_send_an_image(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "ETN_LoadImageBase64", "inputs": {"image": png_base64((12, 10))}},
        "2": {"class_type": "ETN_CropImage", "inputs": {"image": ["1", 0], "x": 2, "y": 3, "width": 5, "height": 4}},
        "3": {"class_type": "ETN_SendImageWebSocket", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    client = uuid.uuid4().hex
    ws = live.ws(client)
    try:
        prompt_id = live.queue_prompt(prompt, client_id=client)
        frames = binary_frames_until_done(ws, prompt_id)
    finally:
        ws.close()
    entry = live.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [preview] = entry["outputs"]["4"]["images"]
    with Image.open(live.settings.temp_dir / preview["subfolder"] / preview["filename"]) as picture:
        assert picture.size == (5, 4) and picture.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    [frame] = frames
    assert struct.unpack(">I", frame[4:8])[0] == 2 and frame[8:16] == b"\x89PNG\r\n\x1a\n"  # PNG
    with Image.open(io.BytesIO(frame[8:])) as sent:
        assert sent.size == (5, 4)


def test_ib_nodes_round_trip_through_pil(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "ETN_LoadImageBase64", "inputs": {"image": png_base64((6, 4))}},
        "2": {"class_type": "ImageToPIL", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "PILToImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    entry = live.wait_history(live.queue_prompt(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]
    [preview] = entry["outputs"]["4"]["images"]
    with Image.open(live.settings.temp_dir / preview["subfolder"] / preview["filename"]) as picture:
        assert picture.size == (6, 4) and picture.convert("RGB").getpixel((1, 1)) == (255, 0, 0)


def test_civitai_checkpoint_loader_drives_a_txt2img(live: LiveServer) -> None:
    prompt: dict[str, Any] = {
        "4": {"class_type": "CivitAI_Checkpoint_Loader",
              "inputs": {"ckpt_air": "{model_id}@{model_version}", "ckpt_name": DEMO.name}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "civitai"}},
    }
    entry = live.wait_history(live.queue_prompt(prompt), timeout=180)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [image] = entry["outputs"]["9"]["images"]
    with Image.open(live.settings.output_dir / image["filename"]) as picture:
        assert picture.size == (64, 64)
