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
from pathlib import Path
from typing import Any

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
        deadline = time.monotonic() + 30
        history: dict[str, Any] = {}
        while time.monotonic() < deadline:
            history = _call(port, "/history")
            if len(history) == 6 and _call(port, "/queue") == {"queue_running": [], "queue_pending": []}:
                break
            time.sleep(0.1)
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
