"""Executor and server benchmark: prints one JSON object.

Starts a real Loom server (subprocess, loopback, fresh temp folders), connects a websocket client
and measures, for a 300-node chain and a 300-node wide graph of cheap latent nodes:
cold run, fully cached re-run and a run with one node changed near the end (seconds from POST to
execution_success), plus websocket bytes received per run and server start time (process start
to /system_stats answering), and its ratio to ``python -c "import torch"`` timed in the same run: the
server listens before torch loads, so the ratio must stay below 1 (issue 14); and the time from
process start to a first 3-node prompt done, sent as soon as the server answers (it waits for the
torch the server loads in the background). The executor figures are taken after that. The reference numbers
are ComfyUI's on this machine (from issue #2).

    python bench/executor.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import websocket

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"cold_s": 0.3, "cached_s": 0.020, "one_changed_s": 0.030, "ws_bytes": 300_000, "start_s": 2.0,
           "start_over_import_torch": 1.0}
COMFYUI_REFERENCE = {"cold_s": 7.9, "cached_s": "4.9-6.9", "one_changed_s": "3.8-4.5",
                     "ws_bytes": 17_000_000, "start_s": "5.5-7.4"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chain_prompt(length: int = 300, changed: float = 1.0) -> dict[str, Any]:
    """EmptyLatentImage -> (length-2) x LatentMultiply -> SaveLatent."""
    prompt: dict[str, Any] = {"1": {"class_type": "EmptyLatentImage",
                                    "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    last = length - 1
    for i in range(2, last + 1):
        multiplier = changed if i == max(2, last - 1) else 1.0
        prompt[str(i)] = {"class_type": "LatentMultiply", "inputs": {"samples": [str(i - 1), 0],
                                                                     "multiplier": multiplier}}
    prompt[str(length)] = {"class_type": "SaveLatent", "inputs": {"samples": [str(last), 0],
                                                                  "filename_prefix": "bench/chain"}}
    return prompt


def wide_prompt(leaves: int = 149, changed: float = 0.0) -> dict[str, Any]:
    """EmptyLatentImage -> `leaves` parallel LatentMultiply -> a LatentAdd reduction tree -> SaveLatent."""
    prompt: dict[str, Any] = {"1": {"class_type": "EmptyLatentImage",
                                    "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    level = []
    for i in range(leaves):
        node_id = f"m{i}"
        multiplier = 1.0 + i / 1000 + (changed if i == leaves - 1 else 0.0)
        prompt[node_id] = {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": multiplier}}
        level.append(node_id)
    counter = 0
    while len(level) > 1:
        nxt = []
        for a, b in zip(level[0::2], level[1::2], strict=False):
            counter += 1
            node_id = f"a{counter}"
            prompt[node_id] = {"class_type": "LatentAdd", "inputs": {"samples1": [a, 0], "samples2": [b, 0]}}
            nxt.append(node_id)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    prompt["save"] = {"class_type": "SaveLatent", "inputs": {"samples": [level[0], 0],
                                                             "filename_prefix": "bench/wide"}}
    return prompt


class Client:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?clientId={self.client_id}", timeout=60)
        self.ws.recv()  # initial status

    def run(self, prompt: dict[str, Any]) -> tuple[float, int, str]:
        """(seconds from POST to execution_success, websocket bytes, final event type)."""
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        request = urllib.request.Request(f"{self.base}/prompt", data=body,
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request) as response:
            prompt_id = json.loads(response.read())["prompt_id"]
        received, elapsed, final = 0, None, ""
        while True:
            message = self.ws.recv()
            received += len(message.encode() if isinstance(message, str) else message)
            if not isinstance(message, str):
                continue
            event = json.loads(message)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                elapsed, final = time.perf_counter() - start, event["type"]
            if event["type"] == "executing" and data.get("node") is None:
                break
        assert elapsed is not None
        return elapsed, received, final


def wait_models_loaded(port: int, timeout: float = 120.0) -> None:
    """Wait until the server's background thread has loaded torch and the backend."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=5) as response:
            models = json.loads(response.read()).get("loom", {}).get("models", {})
        if not models.get("loading"):
            return
        time.sleep(0.05)
    raise RuntimeError("models did not load in time")


def start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    args = [sys.executable, str(ROOT / "main.py"), "--port", str(port), "--log-level", "WARNING"]
    for name in ("input", "output", "temp", "data"):
        args += [f"--{name}-dir", str(tmp / name)]
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/system_stats"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return proc, port, time.perf_counter() - start
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("server exited during start") from None
            time.sleep(0.005)


def import_torch_s() -> float:
    """Seconds for a fresh interpreter to run ``import torch`` (the yardstick of the start time)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, cwd=ROOT)
    return time.perf_counter() - start


def measure(client: Client, make: Any, repeat: int) -> dict[str, Any]:
    cold, cold_bytes, final = client.run(make())
    assert final == "execution_success", final
    cached = [client.run(make()) for _ in range(repeat)]
    changed = [client.run(make(changed=1.0 + (i + 1) / 100)) for i in range(repeat)]
    return {
        "nodes": len(make()),
        "cold_s": round(cold, 4),
        "cold_ws_bytes": cold_bytes,
        "cached_s": round(min(t for t, _, _ in cached), 4),
        "cached_ws_bytes": cached[0][1],
        "one_changed_s": round(min(t for t, _, _ in changed), 4),
        "one_changed_ws_bytes": changed[0][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        torch_imports = [import_torch_s() for _ in range(3)]
        starts = []
        for _ in range(3):
            proc, port, started = start_server(tmp)
            starts.append(started)
            proc.terminate()
            proc.wait(10)
        proc, port, started = start_server(tmp)
        try:
            client = Client(port)
            first, _, _ = client.run(chain_prompt(3, changed=0.5))  # waits for the background torch import
            first_prompt_s = started + first
            wait_models_loaded(port)
            chain_300 = measure(client, chain_prompt, args.repeat)
            chain_3 = measure(client, lambda changed=1.0: chain_prompt(3, changed), args.repeat)
            result = {
                "server_start_s": round(min(starts), 3),
                "import_torch_s": round(min(torch_imports), 3),
                "start_over_import_torch": round(min(starts) / min(torch_imports), 3),
                "first_prompt_from_start_s": round(first_prompt_s, 3),
                "chain_3": chain_3,
                "chain_300": chain_300,
                "cold_ms_per_node": {"chain_3": round(1000 * chain_3["cold_s"] / 3, 3),
                                     "chain_300": round(1000 * chain_300["cold_s"] / 300, 3)},
                "wide_300": measure(client, wide_prompt, args.repeat),
                "targets": TARGETS,
                "comfyui_reference": COMFYUI_REFERENCE,
            }
        finally:
            proc.terminate()
            proc.wait(10)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
