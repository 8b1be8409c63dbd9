"""Load benchmark: many websocket clients, many prompts, one server; prints one JSON object.

Starts a real Loom server (subprocess, loopback, fresh temp folders), waits until its models have loaded,
connects ``--clients`` websocket clients (100) and has them queue ``--prompts`` prompts (1,000) between
them at once, each a cheap graph of built-in latent nodes with its own multiplier (EmptyLatentImage ->
LatentMultiply -> SaveLatent), so none is answered from the cache. While the queue drains a poller
times ``GET /queue``. Reports:

- seconds to drain and prompts per second;
- p50/p99/max milliseconds of ``GET /queue`` under that load, and p50/p99 of the idle server (the reference);
- the server's RSS (/proc/PID/status VmRSS) before the load and after it;
- delivery: every client must see ``execution_success`` and the final ``executing`` (node null) of each of
  its own prompts, and no message of another client's prompt.

The clients run in this process, on the same machine as the server: their CPU use is part of the load.

    python bench/load.py [--clients N] [--prompts N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import websocket

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    return response.status, (json.loads(text) if text else None)


def start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [sys.executable, str(ROOT / "main.py"), "--port", str(port), "--log-level", "WARNING"]
    for name in ("input", "output", "temp", "data"):
        args += [f"--{name}-dir", str(tmp / name)]
    proc = subprocess.Popen(args, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status, stats = call(port, "GET", "/system_stats")
            if status == 200 and not stats.get("loom", {}).get("models", {}).get("loading"):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("server exited during start") from None
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not get ready within 120 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS in /proc/PID/status")


def latent_prompt(index: int) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "2": {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": 1.0 + index / 1e4}},
            "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": f"load/p{index}"}}}


class LoadClient:
    """One websocket client: queues its prompts and records every message it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?clientId={self.client_id}", timeout=60)
        self.prompt_ids: set[str] = set()
        self.done: set[str] = set()
        self.succeeded: set[str] = set()
        self.prompt_messages: Counter[str] = Counter()
        self.foreign: list[str] = []
        self.refused = 0
        self.error = ""
        self._lock = threading.Lock()
        self.finished = threading.Event()
        self.expected = 0

    def queue(self, indices: list[int]) -> None:
        self.expected = len(indices)
        for index in indices:
            while True:
                status, body = call(self.port, "POST", "/prompt", {"prompt": latent_prompt(index),
                                                                   "client_id": self.client_id})
                if status == 200:
                    break
                self.refused += 1  # 503 queue_full: wait for the worker to catch up
                time.sleep(0.2)
            with self._lock:
                self.prompt_ids.add(str(body["prompt_id"]))

    def receive(self, deadline: float) -> None:
        try:
            while time.monotonic() < deadline and not self._all_done():
                opcode, data = self.ws.recv_data()
                if opcode != websocket.ABNF.OPCODE_TEXT:
                    continue
                message = json.loads(data)
                prompt_id = message.get("data", {}).get("prompt_id")
                if prompt_id is None:
                    continue
                self._note(message, str(prompt_id))
        except (websocket.WebSocketException, OSError) as exc:
            self.error = repr(exc)
        finally:
            self.finished.set()

    def _note(self, message: dict[str, Any], prompt_id: str) -> None:
        # A message may outrun the POST's answer; ids of this client's prompts are settled by the end.
        self.prompt_messages[prompt_id] += 1
        kind = message["type"]
        if kind == "execution_success":
            self.succeeded.add(prompt_id)
        elif kind == "executing" and message["data"].get("node") is None:
            with self._lock:
                self.done.add(prompt_id)

    def _all_done(self) -> bool:
        with self._lock:
            return self.expected > 0 and len(self.prompt_ids) == self.expected and self.prompt_ids <= self.done

    def verdict(self) -> dict[str, int]:
        foreign = set(self.prompt_messages) - self.prompt_ids
        return {"missing_success": len(self.prompt_ids - self.succeeded),
                "missing_done": len(self.prompt_ids - self.done),
                "foreign_prompts": len(foreign),
                "foreign_messages": sum(self.prompt_messages[p] for p in foreign)}


def poll_queue(port: int, stop: threading.Event, latencies: list[float], limit: int = 10**9) -> None:
    """Time GET /queue (ms) every 10 ms until ``stop`` is set or ``limit`` samples are taken."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set() and len(latencies) < limit:
        start = time.perf_counter()
        conn.request("GET", "/queue")
        conn.getresponse().read()
        latencies.append(1000 * (time.perf_counter() - start))
        time.sleep(0.01)
    conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def run(clients_n: int, prompts_n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loom-load-") as tmp_name:
        proc, port = start_server(Path(tmp_name))
        try:
            call(port, "POST", "/prompt", {"prompt": latent_prompt(-1)})  # warm the nodes once
            deadline = time.monotonic() + 60
            while call(port, "GET", "/queue")[1]["queue_pending"] or call(port, "GET", "/queue")[1]["queue_running"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the warm-up prompt did not finish")
                time.sleep(0.05)
            rss_before = rss_mb(proc.pid)
            idle: list[float] = []
            poll_queue(port, threading.Event(), idle, limit=200)
            clients = [LoadClient(port) for _ in range(clients_n)]
            for client in clients:
                client.ws.recv()  # the initial status message
            latencies: list[float] = []
            stop = threading.Event()
            poller = threading.Thread(target=poll_queue, args=(port, stop, latencies))
            start = time.monotonic()
            receivers = [threading.Thread(target=c.receive, args=(start + TIMEOUT,)) for c in clients]
            for thread in receivers:
                thread.start()
            poller.start()
            senders = [threading.Thread(target=c.queue, args=(list(range(i, prompts_n, clients_n)),))
                       for i, c in enumerate(clients)]
            for thread in senders:
                thread.start()
            for thread in senders:
                thread.join()
            queued_s = time.monotonic() - start
            for thread in receivers:
                thread.join()
            drained_s = time.monotonic() - start
            stop.set()
            poller.join()
            rss_after = rss_mb(proc.pid)
            for client in clients:
                client.ws.close()
        finally:
            proc.terminate()
            proc.wait(10)
    verdicts = [c.verdict() for c in clients]
    delivery = {key: sum(v[key] for v in verdicts) for key in verdicts[0]}
    delivery["clients_with_errors"] = sum(1 for c in clients if c.error)
    delivery["every_client_got_all_its_messages"] = (delivery["missing_success"] == 0
                                                     and delivery["missing_done"] == 0
                                                     and delivery["clients_with_errors"] == 0)
    delivery["no_client_got_others_messages"] = delivery["foreign_messages"] == 0
    return {
        "clients": clients_n, "prompts": sum(len(c.prompt_ids) for c in clients),
        "refused_queue_full": sum(c.refused for c in clients),
        "all_queued_s": round(queued_s, 2), "drained_s": round(drained_s, 2),
        "prompts_per_s": round(prompts_n / drained_s, 1),
        "get_queue_ms": {"samples": len(latencies), "p50": percentile(latencies, 0.5),
                         "p99": percentile(latencies, 0.99), "max": round(max(latencies), 2),
                         "mean": round(statistics.fmean(latencies), 2),
                         "idle_p50": percentile(idle, 0.5), "idle_p99": percentile(idle, 0.99)},
        "rss_mb": {"before": rss_before, "after": rss_after, "growth": round(rss_after - rss_before, 1)},
        "delivery": delivery,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=1000)
    args = parser.parse_args()
    json.dump(run(args.clients, args.prompts), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
