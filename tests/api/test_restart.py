"""The queue survives a crash: kill -9 a real server with prompts pending, restart, all accounted for."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websocket

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(ROOT / "main.py"), "--port", str(port), "--extra-nodes", "tests.support.stub_nodes",
            "--log-level", "WARNING"]
    for name in ("input", "output", "temp", "data"):
        args += [f"--{name}-dir", str(tmp / name)]
    proc = subprocess.Popen(args, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc
        except OSError:
            assert proc.poll() is None, "server exited during start"
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start listening within 30 s")


def _wait_drained(port: int, entries: int, timeout: float) -> dict[str, Any]:
    """The history once it holds ``entries`` prompts and the queue is empty (or whatever it holds at ``timeout``)."""
    deadline = time.monotonic() + timeout
    history: dict[str, Any] = {}
    while time.monotonic() < deadline:
        history = _call(port, "/history")
        if len(history) >= entries and _call(port, "/queue") == {"queue_running": [], "queue_pending": []}:
            break
        time.sleep(0.1)
    return history


def _call(port: int, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else None


def _prompt(value: int, seconds: float) -> dict[str, Any]:
    return {"1": {"class_type": "StubSleep", "inputs": {"value": value, "seconds": seconds}},
            "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}}


def _wait_running(port: int, prompt_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        running = _call(port, "/queue")["queue_running"]
        if running and running[0][1] == prompt_id:
            return
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} never started running")


def test_kill_9_and_restart_accounts_for_every_prompt(tmp_path: Path) -> None:
    port = _free_port()
    proc = _start(tmp_path, port)
    try:
        blocking = _call(port, "/prompt", {"prompt": _prompt(0, 600.0)})["prompt_id"]
        _wait_running(port, blocking)
        pending = [_call(port, "/prompt", {"prompt": _prompt(i, 0.0)})["prompt_id"] for i in range(1, 6)]
        queue = _call(port, "/queue")
        assert [item[1] for item in queue["queue_pending"]] and len(queue["queue_pending"]) == 5
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    proc = _start(tmp_path, port)
    try:
        history = _wait_drained(port, 6, timeout=30)
        assert set(history) == {blocking, *pending}
        crashed = history[blocking]["status"]
        assert crashed["status_str"] == "error" and crashed["completed"] is False
        assert "stopped while this prompt was running" in json.dumps(crashed["messages"])
        for i, prompt_id in enumerate(pending, start=1):
            entry = history[prompt_id]
            assert entry["status"]["status_str"] == "success"
            assert entry["outputs"] == {"2": {"text": [str(i)]}}
        # The crashed prompt is not re-run: it is still in history exactly once, and the queue is empty.
        time.sleep(0.5)
        assert _call(port, "/queue") == {"queue_running": [], "queue_pending": []}
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- kill -9 in each phase of a real prompt

DEMO_CHECKPOINT = "tiny-shapes.safetensors"  # the demo model in models/checkpoints
QUEUED = 50
#: Which websocket event of the first prompt triggers the kill: (message type, node id).
PHASES = {"model_load": ("executing", "4"), "sampling": ("progress", "3"), "save": ("executing", "9")}


def _txt2img(index: int, steps: int) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": index, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"crash/p{index:03d}"}},
    }


def _kill_on(ws: websocket.WebSocket, prompt_id: str, trigger: tuple[str, str], proc: subprocess.Popen[bytes],
             timeout: float = 60.0) -> None:
    """SIGKILL the server the moment ``ws`` reports ``trigger`` for ``prompt_id``."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            opcode, data = ws.recv_data()
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = json.loads(data)
            body = message.get("data", {})
            if message["type"] == trigger[0] and body.get("node") == trigger[1] and body.get("prompt_id") == prompt_id:
                os.kill(proc.pid, signal.SIGKILL)
                return
            assert message["type"] not in ("execution_error", "execution_success") or body.get("prompt_id") != \
                prompt_id, f"prompt {prompt_id} ended before the kill: {message}"
        raise AssertionError(f"no {trigger} event for {prompt_id} within {timeout} s")
    finally:
        ws.close()


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_kill_9_in_each_phase_of_a_real_prompt_loses_nothing_and_runs_nothing_twice(tmp_path: Path,
                                                                                   phase: str) -> None:
    port = _free_port()
    proc = _start(tmp_path, port)
    client_id = "crash-test"
    try:
        # The websocket is connected before the first prompt is queued, so no event of it is missed.
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?clientId={client_id}", timeout=60)
        # A short sleep runs first, so all prompts are queued before the first real one (the target) starts.
        ids = [_call(port, "/prompt", {"prompt": _prompt(-1, 2.0), "client_id": client_id})["prompt_id"]]
        steps = 200 if phase == "sampling" else 2
        ids.append(_call(port, "/prompt", {"prompt": _txt2img(1, steps), "client_id": client_id})["prompt_id"])
        with ThreadPoolExecutor(1) as pool:
            killed = pool.submit(_kill_on, ws, ids[1], PHASES[phase], proc)
            for i in range(2, QUEUED):
                # Three more real prompts after the target, then cheap stub prompts (their outputs name them).
                prompt = _txt2img(i, 2) if i < 5 else _prompt(i, 0.0)
                try:
                    ids.append(_call(port, "/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"])
                except OSError:
                    break  # killed while queueing: the prompts accepted so far must all be accounted for
            killed.result(90)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert len(ids) == QUEUED, f"the server died after {len(ids)} of {QUEUED} prompts were queued"

    proc = _start(tmp_path, port)
    try:
        history = _wait_drained(port, QUEUED, timeout=120)
        assert set(history) == set(ids), "a prompt was lost or invented"
        crashed = [pid for pid in ids if history[pid]["status"]["status_str"] != "success"]
        # The one running at the kill is the only failure: the target, or (a kill on save that raced the
        # target's end) the prompt after it.
        assert len(crashed) == 1 and crashed[0] in ids[1:3], crashed
        status = history[crashed[0]]["status"]
        assert status["status_str"] == "error" and status["completed"] is False
        assert "stopped while this prompt was running" in json.dumps(status["messages"])
        saved = sorted(p.name for p in (tmp_path / "output" / "crash").glob("*.png"))
        assert history[ids[0]]["outputs"] == {"2": {"text": ["-1"]}}
        for index, prompt_id in enumerate(ids[5:], start=5):
            assert history[prompt_id]["outputs"] == {"2": {"text": [str(index)]}}
        for index, prompt_id in enumerate(ids[1:5], start=1):
            mine = [name for name in saved if name.startswith(f"p{index:03d}_")]
            if prompt_id in crashed:
                assert len(mine) <= 1, mine
            else:
                assert len(mine) == 1, (index, mine)  # run once: exactly one image
                assert history[prompt_id]["outputs"]["9"]["images"][0]["filename"] == mine[0]
        time.sleep(0.5)  # the crashed prompt is not re-run
        assert _call(port, "/queue") == {"queue_running": [], "queue_pending": []}
        assert len(_call(port, "/history")) == QUEUED
    finally:
        proc.terminate()
        proc.wait(10)
