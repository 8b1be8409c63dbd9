"""A real Loom server on loopback for API tests: real queue (sqlite in tmp), executor, worker, hub.

The server runs its asyncio loop on a background thread; tests talk to it over real sockets with
``http.client`` and ``websocket-client``. Besides the built-in nodes, the registry holds the stub nodes
of tests/support/stub_nodes.py, whose behaviour the tests control (``server.controls``).
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websocket
from PIL import Image

from engine.api import Hub, bound_port, create_app, start_server
from engine.cache import OutputCache
from engine.executor import Executor
from engine.models.manager import ModelManager
from engine.queue import PromptQueue
from engine.registry import NodeRegistry
from engine.settings import Settings
from engine.worker import PromptWorker
from nodes import register_builtin_nodes
from tests.support.stub_nodes import Controls, register_stub_nodes

TIMEOUT = 10.0


def png_bytes(size: tuple[int, int] = (8, 6), color: tuple[int, ...] = (200, 30, 30, 255),
              mode: str = "RGBA", text: dict[str, str] | None = None) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


# --------------------------------------------------------------------------- clients


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for name, (filename, data, ctype) in files.items():
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="{quoted}"\r\nContent-Type: {ctype}\r\n\r\n'.encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@dataclass
class LiveServer:
    settings: Settings
    registry: NodeRegistry
    queue: PromptQueue
    worker: PromptWorker
    hub: Hub
    cache: OutputCache
    controls: Controls
    port: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    runner: Any
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, *, json_body: Any = None, body: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True) -> Reply:
        all_headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if auth and self.token and "Authorization" not in all_headers:
            all_headers["Authorization"] = f"Bearer {self.token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            return Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, json_body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, json_body=json_body, **kw)

    def upload(self, path: str, data: bytes, filename: str = "a.png", *, fields: dict[str, str] | None = None,
               headers: dict[str, str] | None = None, **kw: Any) -> Reply:
        body, ctype = multipart(fields or {}, {"image": (filename, data, "image/png")})
        return self.request("POST", path, body=body, headers={**(headers or {}), "Content-Type": ctype}, **kw)

    def ws(self, client_id: str | None = None, query: str = "") -> websocket.WebSocket:
        cid = client_id or uuid.uuid4().hex
        url = f"ws://127.0.0.1:{self.port}/ws?clientId={cid}{query}"
        if self.token and "token=" not in query:
            url += f"&token={self.token}"
        return websocket.create_connection(url, timeout=TIMEOUT)

    def queue_prompt(self, prompt: dict[str, Any], client_id: str | None = None, **extra: Any) -> str:
        body: dict[str, Any] = {"prompt": prompt, **extra}
        if client_id is not None:
            body["client_id"] = client_id
        reply = self.post("/prompt", body)
        assert reply.status == 200, reply.body
        return str(reply.json()["prompt_id"])

    def wait_history(self, prompt_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").json()
            if prompt_id in entry:
                return dict(entry[prompt_id])
            time.sleep(0.02)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")

    def wait_idle(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue.remaining() == 0:
                return
            time.sleep(0.02)
        raise AssertionError("the queue did not drain")

    def stop(self) -> None:
        self.controls.gate.set()
        self.worker.stop()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()
        self.queue.close()


def start_live_server(root: Path, *, hub_options: dict[str, Any] | None = None,
                      make_runner: Callable[..., Any] | None = None,
                      extra_nodes: Callable[[NodeRegistry], None] | None = None, **overrides: Any) -> LiveServer:
    """A Loom server on loopback with the stub nodes; ``make_runner(queue, registry, folders, sink_for)``
    replaces the local PromptWorker (the cluster tests pass a ClusterRunner)."""
    options: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "input_dir": root / "input", "output_dir": root / "output",
        "temp_dir": root / "temp", "data_dir": root / "data", "user_dir": root / "user",
        "frontend_dir": root / "frontend", "models_dirs": (root / "models",),
    }
    options.update(overrides)
    settings = Settings(**options)
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    controls = Controls()
    register_stub_nodes(registry, controls)
    if extra_nodes is not None:
        extra_nodes(registry)
    folders = settings.folders()
    folders.ensure()
    queue = PromptQueue(settings.database_path, max_pending=settings.max_queue,
                        max_history=settings.max_history)
    cache = OutputCache(max_bytes=10**8, max_entries=10_000)
    executor = Executor(registry, folders, cache, ModelManager("cpu"), previews=settings.preview_method != "none",
                        preview_method=settings.preview_method)
    hub = Hub(**(hub_options or {}))
    worker = (PromptWorker(queue, executor, hub.sink_for) if make_runner is None
              else make_runner(queue, registry, folders, hub.sink_for))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loom-test-server", daemon=True)
    thread.start()
    app = create_app(settings, registry, queue, worker, hub)
    runner = asyncio.run_coroutine_threadsafe(start_server(app, settings), loop).result(TIMEOUT)
    worker.start()
    return LiveServer(settings, registry, queue, worker, hub, cache, controls, bound_port(runner), loop,
                      thread, runner, token=settings.auth_token)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("loom"))
    yield live
    live.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start a server with overridden settings (auth token, limits...); stopped after the test."""
    started: list[LiveServer] = []

    def make(**overrides: Any) -> LiveServer:
        live = start_live_server(tmp_path / f"s{len(started)}", **overrides)
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


# --------------------------------------------------------------------------- websocket helpers


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    """The next text message (binary frames are skipped)."""
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return dict(json.loads(data))


def collect_until_done(ws: websocket.WebSocket, prompt_id: str, timeout: float = TIMEOUT
                       ) -> list[dict[str, Any]]:
    """Text messages up to and including ``executing`` with node null for ``prompt_id``."""
    deadline = time.monotonic() + timeout
    messages: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        msg = recv_json(ws)
        messages.append(msg)
        data = msg.get("data", {})
        if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return messages
    raise AssertionError(f"no end of prompt {prompt_id}; got {[m['type'] for m in messages]}")


def run_collecting(live: LiveServer, prompt: dict[str, Any], timeout: float = TIMEOUT
                   ) -> tuple[str, list[dict[str, Any]]]:
    """Queue ``prompt`` from a fresh websocket client; its id and the text messages up to its end."""
    client = uuid.uuid4().hex
    ws = live.ws(client)
    try:
        prompt_id = live.queue_prompt(prompt, client_id=client)
        return prompt_id, collect_until_done(ws, prompt_id, timeout)
    finally:
        ws.close()


def chain_prompt(value: int, *, show: bool = True, middle: str = "StubAdd", **middle_inputs: Any
                 ) -> dict[str, Any]:
    """StubInt(value) -> middle -> StubShow."""
    if middle == "StubAdd":
        middle_inputs.setdefault("b", 1)
    prompt: dict[str, Any] = {
        "1": {"class_type": "StubInt", "inputs": {"value": value}},
        "2": {"class_type": middle, "inputs": {"a": ["1", 0], **middle_inputs}},
    }
    if show:
        prompt["3"] = {"class_type": "StubShow", "inputs": {"value": ["2", 0]}}
    return prompt
