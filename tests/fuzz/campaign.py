"""A seeded fuzzing campaign against a real Loom server on loopback (``make fuzz``).

Starts ``main.py`` (with the stub nodes) as a subprocess on a free loopback port with fresh folders, then
sends ``--requests`` requests (20,000 by default) from ``--workers`` threads: malformed and random JSON
(NaN, Infinity, lone surrogates, huge numbers, deep nesting, truncated text), API- and editor-format prompts,
random query strings, multipart uploads with odd names and bodies, wrong methods, hostile headers, websocket
sessions with odd client ids and frames (counted under status 101 when the handshake succeeds), and a few
large bodies (10 MB and 105 MB). Each worker draws from its own ``random.Random(seed + worker)``, so a seed names the
same requests every time (their interleaving varies).

Prints one JSON object: the request count, the count of each status, 5xx (a 503 ``queue_full`` is the
documented answer to a full queue and is not counted), timeouts, connection errors, whether the server is
still alive, and for every 5xx a reproducer (method, path, body summary, status, answer) and the tail of
the server's log. Exits 1 when a 5xx, a timeout or a lost connection was seen, or the server died.

    python -m tests.fuzz.campaign [--seed N] [--requests N] [--workers N] [--time-limit S]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT = 60.0
MB = 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    summary: str = ""


@dataclass
class Tally:
    status: Counter[str] = field(default_factory=Counter)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    timeouts: list[dict[str, Any]] = field(default_factory=list)
    connection_errors: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(tmp: Path, port: int, log_path: Path, token: str | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(ROOT / "main.py"), "--port", str(port), "--extra-nodes", "tests.support.stub_nodes",
            "--log-level", "WARNING", "--models-dir", str(ROOT / "models")]
    if token is not None:
        args += ["--auth-token", token]
    for name in ("input", "output", "temp", "data"):
        args += [f"--{name}-dir", str(tmp / name)]
    log = log_path.open("wb")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited during start; see {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/system_stats", headers=_auth(token))
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not answer within 60 s")


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def with_credentials(rng: random.Random, request: Request, token: str | None) -> Request:
    """With an auth token: most requests carry it (header, or query on websockets), some a wrong one, some none."""
    if token is None or "Authorization" in request.headers:
        return request
    roll = rng.random()
    given = token if roll < 0.85 else (token[:-1] + "x" if roll < 0.93 else None)
    if given is None:
        request.summary += " (no token)"
    elif request.method == "WS":
        request.path += f"&token={given}" if "?" in request.path else f"?token={given}"
    else:
        request.headers = {**request.headers, "Authorization": f"Bearer {given}"}
    if given not in (None, token):
        request.summary += " (wrong token)"
    return request


# --------------------------------------------------------------------------- request generators


def png_bytes(rng: random.Random) -> bytes:
    out = io.BytesIO()
    size = (rng.randint(1, 24), rng.randint(1, 24))
    Image.new(rng.choice(["RGB", "RGBA", "L"]), size).save(out, format="PNG")
    return out.getvalue()


WEIRD_STRINGS = ["", " ", "..", "../../etc/passwd", "/etc/passwd", "C:\\x", "a\x00b", "\ud800", "\udfff", "😀",
                 "%2e%2e%2f", "..\\..\\x", "a" * 5000, "null", "[]", "{}", "NaN", "-1", "1e400", "\u202e", "x [output]",
                 "subdir/a.png", "\n\r", "'; DROP TABLE x;--", "%00", "CON", "a.png"]
WEIRD_NUMBERS: list[Any] = [0, -1, 1, 2**31, 2**63, -(2**63), 2**64 + 1, 10**400, 1e308, -1e308, 5e-324, 0.5, True]
CLASSES = ["StubInt", "StubAdd", "StubShow", "StubOptions", "StubFail", "StubSteps", "StubPreview", "StubReadFile",
           "EmptyLatentImage", "LatentMultiply", "SaveLatent", "KSampler", "CheckpointLoaderSimple", "SaveImage",
           "LoadImage", "CLIPTextEncode", "VAEDecode", "PreviewImage", "LoadCheckpoint", "Nope"]
INPUTS = ["value", "a", "b", "samples", "multiplier", "width", "height", "batch_size", "filename_prefix", "seed",
          "steps", "cfg", "ckpt_name", "images", "image", "text", "clip", "model", "path", "seconds", "x"]
GET_PATHS = ["/queue", "/history", "/prompt", "/object_info", "/system_stats", "/embeddings", "/models",
             "/features", "/extensions", "/view", "/loom/default-workflow", "/", "/ws", "/models/checkpoints",
             "/models/loras", "/object_info/StubInt", "/object_info/KSampler", "/history/x", "/frontend/index.html"]
POST_PATHS = ["/prompt", "/queue", "/history", "/interrupt", "/free", "/upload/image", "/upload/mask",
              "/loom/workflow/api", "/loom/workflow/editor"]


def weird_scalar(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(WEIRD_NUMBERS)
    if roll < 0.6:
        return rng.choice(WEIRD_STRINGS)
    if roll < 0.7:
        return rng.choice([None, False, [], {}])
    if roll < 0.85:
        return rng.uniform(-1e6, 1e6)
    return rng.randint(-10, 100)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        return weird_scalar(rng)
    if roll < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {str(weird_scalar(rng))[:20]: random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_prompt(rng: random.Random) -> dict[str, Any]:
    """A graph of real class names with partly sensible, partly broken inputs and links."""
    ids = [str(i) for i in range(1, rng.randint(1, 6) + 1)]
    prompt: dict[str, Any] = {}
    for node_id in ids:
        inputs: dict[str, Any] = {}
        for _ in range(rng.randint(0, 4)):
            name = rng.choice(INPUTS)
            roll = rng.random()
            if roll < 0.35:
                inputs[name] = [rng.choice([*ids, "99", 3, None]), rng.choice([0, 1, -1, 99, "0"])]
            elif roll < 0.5:
                inputs[name] = random_json(rng)
            else:
                inputs[name] = weird_scalar(rng)
        node: dict[str, Any] = {"class_type": rng.choice(CLASSES), "inputs": inputs}
        if rng.random() < 0.1:
            node["_meta"] = random_json(rng)
        prompt[node_id] = node
    return prompt


def cheap_valid_prompt(rng: random.Random) -> dict[str, Any]:
    return {"1": {"class_type": "StubInt", "inputs": {"value": rng.randint(-1000, 1000)}},
            "2": {"class_type": "StubAdd", "inputs": {"a": ["1", 0], "b": rng.randint(-5, 5)}},
            "3": {"class_type": "StubShow", "inputs": {"value": ["2", 0]}}}


def random_editor_workflow(rng: random.Random) -> dict[str, Any]:
    nodes = []
    for i in range(rng.randint(0, 4)):
        nodes.append({"id": rng.choice([i, str(i), -1, None, 2**70]), "type": rng.choice(CLASSES),
                      "mode": rng.choice([0, 2, 4, "x"]),
                      "inputs": [{"name": rng.choice(INPUTS), "link": rng.choice([None, 1, 2, -1, "x"])}
                                 for _ in range(rng.randint(0, 3))],
                      "outputs": [{"name": "o", "links": [rng.randint(0, 4)]}],
                      "widgets_values": [weird_scalar(rng) for _ in range(rng.randint(0, 4))]})
    links = [[rng.randint(0, 4), rng.randint(-1, 4), rng.randint(0, 2), rng.randint(-1, 4), rng.randint(0, 2),
              rng.choice(["INT", "LATENT", "*"])] for _ in range(rng.randint(0, 4))]
    workflow: dict[str, Any] = {"nodes": nodes, "links": links if rng.random() < 0.9 else random_json(rng)}
    if rng.random() < 0.3:
        workflow["definitions"] = {"subgraphs": [random_json(rng)]}
    return workflow


def json_text(rng: random.Random, value: Any) -> bytes:
    """JSON with the non-standard literals Python writes (NaN, Infinity) and sometimes mangled on purpose."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (ValueError, RecursionError):
        text = "{}"
    roll = rng.random()
    if roll < 0.05 and len(text) > 2:
        text = text[: rng.randint(1, len(text) - 1)]  # truncated
    elif roll < 0.08:
        text = text.replace("1", "NaN", 1)
    elif roll < 0.1:
        text = "[" * rng.randint(500, 20_000) + "]" * rng.randint(0, 20_000)
    elif roll < 0.12:
        text = '{"prompt": ' + "9" * rng.randint(400, 20_000) + "}"
    elif roll < 0.14:
        text = '{"prompt": {"1": {"class_type": "StubInt", "inputs": {"value": "\\ud800"}}}, "x": "\\udfff"}'
    elif roll < 0.16:
        return text.encode() + b"\xff\xfe\x80"  # not UTF-8
    elif roll < 0.18:
        text = '{"a": 1, "a": 2, "prompt": Infinity, "client_id": -Infinity}'
    return text.encode("utf-8", "surrogatepass")


def random_query(rng: random.Random) -> str:
    keys = ["max_items", "offset", "filename", "type", "subfolder", "preview", "channel", "clientId", "token",
            "x", "offset", "max_items"]
    parts = []
    for _ in range(rng.randint(0, 4)):
        value = str(weird_scalar(rng))
        value = "".join(c if c.isalnum() or c in "-._~" else f"%{ord(c) & 0xFF:02x}" for c in value[:60])
        if rng.random() < 0.05:
            value = "%zz%"
        parts.append(f"{rng.choice(keys)}={value}")
    return ("?" + "&".join(parts)) if parts else ""


def multipart_upload(rng: random.Random, path: str) -> Request:
    boundary = uuid.uuid4().hex
    fields: list[tuple[str, str | None, bytes]] = []
    data = png_bytes(rng) if rng.random() < 0.6 else rng.randbytes(rng.randint(0, 300))
    filename = rng.choice(["a.png", "b.png", "x/../y.png", "..", "", "a\x00.png", "😀.png", "sub/c.png",
                           "a" * 300 + ".png", "/abs.png", "C:\\x.png", "%2e%2e.png"])
    fields.append((rng.choice(["image", "image", "file", "mask"]), filename, data))
    if path == "/upload/mask" and rng.random() < 0.7:
        ref = {"filename": rng.choice(["a.png", "../x", "", "nope.png"]),
               "subfolder": rng.choice(["", "..", "sub"]), "type": rng.choice(["input", "output", "temp", "bad"])}
        fields.append(("original_ref", None, json_text(rng, ref if rng.random() < 0.8 else random_json(rng))))
    for name in ("overwrite", "subfolder", "type"):
        if rng.random() < 0.4:
            fields.append((name, None, str(weird_scalar(rng)).encode("utf-8", "surrogatepass")))
    form = {name: value[:80].decode("utf-8", "replace") + ("..." if len(value) > 80 else "")
            for name, fname, value in fields[1:] if fname is None}
    out = io.BytesIO()
    for name, fname, value in fields:
        disposition = f'form-data; name="{name}"'
        if fname is not None:
            disposition += f'; filename="{fname}"'
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode("utf-8", "surrogatepass"))
        if fname is not None:
            out.write(b"Content-Type: image/png\r\n")
        out.write(b"\r\n" + value + b"\r\n")
    roll = rng.random()
    if roll > 0.1:
        out.write(f"--{boundary}--\r\n".encode())
    ctype = f"multipart/form-data; boundary={boundary}"
    if roll < 0.05:
        ctype = rng.choice(["multipart/form-data", "multipart/form-data; boundary=", "application/json",
                            "multipart/form-data; boundary=other"])
    return Request("POST", path, out.getvalue(), {"Content-Type": ctype},
                   f"multipart {fields[0][0]}={filename[:80]!r} ({len(data)} bytes), fields {form}")


def json_request(rng: random.Random, path: str, value: Any, summary: str) -> Request:
    body = json_text(rng, value)
    ctype = "application/json" if rng.random() < 0.9 else rng.choice(["text/plain", "", "application/x-www-form"])
    return Request("POST", path, body, {"Content-Type": ctype} if ctype else {},
                   f"{summary}: {body[:160]!r}{'...' if len(body) > 160 else ''} ({len(body)} bytes)")


HOSTILE_HEADERS = [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Host": "evil.example"},
                   {"Host": "127.0.0.1:1"}, {"Authorization": "Bearer x"}, {"Authorization": "Basic \u00ff"},
                   {"Sec-Fetch-Site": "cross-site"}, {"Content-Encoding": "gzip"}, {"Transfer-Encoding": "chunked"},
                   {"Accept": "*/*;q=NaN"}, {"X-Forwarded-For": "1.2.3.4"}, {"Cookie": "a=" + "b" * 3000}]


def websocket_session(rng: random.Random) -> Request:
    """A websocket connection (method ``WS``) with an odd client id and odd first frames."""
    client_id = rng.choice([uuid.uuid4().hex, "", "x" * 400, "%00", "../x", "😀", "a b"])
    query = f"?clientId={client_id}" + rng.choice(["", "&previews=1", "&token=x", "&clientId=two"])
    frames = [json_text(rng, rng.choice([{"type": "feature_flags", "data": random_json(rng)}, random_json(rng)]))
              for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.3:
        frames.append(rng.randbytes(rng.randint(0, 64)))
    return Request("WS", rng.choice(["/ws", "/api/ws"]) + query, b"\x00".join(frames),
                   summary=f"websocket {query[:80]!r}, frames {[f[:60] for f in frames]!r}"[:300])


def next_request(rng: random.Random) -> Request:
    request = websocket_session(rng) if rng.random() < 0.005 else _next_request(rng)
    if rng.random() < 0.05:
        extra = rng.choice(HOSTILE_HEADERS)
        if "Transfer-Encoding" in extra and request.body is None:
            extra = {"Origin": "http://evil.example"}
        request.headers = {**request.headers, **extra}
        request.summary += f" headers {extra!r}"[:200]
    return request


def _next_request(rng: random.Random) -> Request:
    roll = rng.random()
    if roll < 0.25:
        path = rng.choice(GET_PATHS)
        if path == "/history/x":
            path = "/history/" + rng.choice([uuid.uuid4().hex, "x", "%2e%2e", "a" * 500, "%00"])
        elif path == "/view" or rng.random() < 0.3:
            path += random_query(rng)
        return Request("GET", rng.choice(["", "/api"]) + path, summary="GET")
    if roll < 0.50:
        value: Any = {"prompt": random_prompt(rng)}
        if rng.random() < 0.3:
            value["client_id"] = weird_scalar(rng)
        if rng.random() < 0.2:
            value["extra_data"] = random_json(rng)
        if rng.random() < 0.1:
            value["number"] = weird_scalar(rng)
        if rng.random() < 0.1:
            value["front"] = weird_scalar(rng)
        return json_request(rng, "/prompt", value, "random prompt")
    if roll < 0.56:
        return json_request(rng, "/prompt", {"prompt": cheap_valid_prompt(rng), "client_id": uuid.uuid4().hex},
                            "valid stub prompt")
    if roll < 0.64:
        return json_request(rng, rng.choice(["/prompt", "/loom/workflow/api"]),
                            {"prompt": random_editor_workflow(rng)} if rng.random() < 0.5
                            else random_editor_workflow(rng), "editor workflow")
    if roll < 0.72:
        return json_request(rng, rng.choice(POST_PATHS), random_json(rng), "random JSON")
    if roll < 0.80:
        value = {rng.choice(["delete", "clear", "max_items"]): rng.choice([random_json(rng), True, ["x"], 10**30])}
        return json_request(rng, rng.choice(["/queue", "/history", "/interrupt", "/free"]), value, "control")
    if roll < 0.92:
        return multipart_upload(rng, rng.choice(["/upload/image", "/upload/mask"]))
    if roll < 0.96:
        method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "GET", "POST"])
        path = rng.choice([*GET_PATHS, *POST_PATHS, "/nope", "/api/../queue", "//queue", "/%2e%2e/x"])
        return Request(method, path, rng.randbytes(rng.randint(0, 64)) if method in {"PUT", "PATCH"} else None,
                       summary=f"{method} on {path}")
    return json_request(rng, "/loom/workflow/editor", {"prompt": random_prompt(rng)} if rng.random() < 0.5
                        else random_prompt(rng), "to editor")


def large_requests() -> list[Request]:
    """Bodies at and beyond the limits: one each of 10 MB and 105 MB to /prompt and /upload/image."""
    out = []
    for size in (10 * MB, 105 * MB):
        body = b'{"prompt": {"1": {"class_type": "StubInt", "inputs": {"value": "' + b"x" * size + b'"}}}}'
        out.append(Request("POST", "/prompt", body, {"Content-Type": "application/json"}, f"{size} byte JSON"))
        boundary = "largeboundary"
        data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG" + b"\x00" * size + \
            f"\r\n--{boundary}--\r\n".encode()
        out.append(Request("POST", "/upload/image", data, {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                           f"{size} byte upload"))
    return out


# --------------------------------------------------------------------------- sending


def send_websocket(port: int, request: Request) -> int:
    """Open the websocket, send its frames, read the greeting; the handshake's status (101 when accepted)."""
    path = "".join(c if c.isascii() and c.isprintable() and c != " " else f"%{ord(c) & 0xFF:02x}"
                   for c in request.path)
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=REQUEST_TIMEOUT)
    except websocket.WebSocketBadStatusException as exc:
        return int(exc.status_code)
    try:
        ws.recv()  # the status greeting
        for frame in (request.body or b"").split(b"\x00"):
            if frame.startswith((b"{", b"[", b'"')):
                ws.send(frame.decode("utf-8", "replace"))
            else:
                ws.send_binary(frame)
        ws.ping()
    except websocket.WebSocketConnectionClosedException:
        pass  # the server may close a socket that sent something it does not accept
    finally:
        ws.close()
    return 101


def send(port: int, request: Request, conn: http.client.HTTPConnection | None
         ) -> tuple[int, bytes, http.client.HTTPConnection]:
    """Send on a kept-alive connection; a connection the server closed while idle is retried once, fresh."""
    if request.method == "WS":
        status = send_websocket(port, request)
        return status, b"", conn or http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    if conn is not None:
        try:
            return _send_on(conn, port, request)
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            pass
    return _send_on(http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT), port, request)


def _send_on(conn: http.client.HTTPConnection, port: int, request: Request
             ) -> tuple[int, bytes, http.client.HTTPConnection]:
    chunked = request.headers.get("Transfer-Encoding") == "chunked"
    try:
        conn.request(request.method, request.path, body=request.body, headers=request.headers,
                     encode_chunked=chunked)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        raise
    if response.will_close:
        conn.close()
        return response.status, body, http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    return response.status, body, conn


def record(tally: Tally, request: Request, status: int, body: bytes) -> None:
    with tally.lock:
        tally.status[str(status)] += 1
        if status >= 500 and not (status == 503 and b"queue_full" in body):
            tally.server_errors.append({"method": request.method, "path": request.path, "body": request.summary,
                                        "status": status, "answer": body[:400].decode("utf-8", "replace")})


def worker(port: int, rng: random.Random, count: int, deadline: float, tally: Tally, extra: list[Request],
           token: str | None = None) -> None:
    conn: http.client.HTTPConnection | None = None
    pending = list(extra)
    for i in range(count):
        if time.monotonic() > deadline:
            return
        late = count - i <= len(pending)
        request = pending.pop() if pending and (late or rng.random() < 0.01) else next_request(rng)
        request = with_credentials(rng, request, token)
        try:
            status, body, conn = send(port, request, conn)
        except (TimeoutError, websocket.WebSocketTimeoutException):
            conn = None
            with tally.lock:
                tally.timeouts.append({"method": request.method, "path": request.path, "body": request.summary})
            continue
        except (OSError, http.client.HTTPException, websocket.WebSocketException) as exc:
            conn = None
            # A server may close the connection of a request it refused before reading its body (413).
            if request.body is not None and len(request.body) > MB:
                record(tally, request, 413, b"connection closed on a large body")
                continue
            with tally.lock:
                tally.connection_errors.append({"method": request.method, "path": request.path,
                                                "body": request.summary, "error": repr(exc)})
            continue
        record(tally, request, status, body)


def alive(port: int, proc: subprocess.Popen[bytes], token: str | None = None) -> bool:
    if proc.poll() is not None:
        return False
    try:
        status, _, conn = send(port, Request("GET", "/system_stats", headers=_auth(token)), None)
        conn.close()
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


def run(seed: int, requests: int, workers: int, time_limit: float, token: str | None = None) -> dict[str, Any]:
    """The campaign; with ``token`` the server requires it (``--auth-token``) and most requests carry it."""
    with tempfile.TemporaryDirectory(prefix="loom-fuzz-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        log_path = tmp / "server.log"
        proc = start_server(tmp, port, log_path, token)
        tally = Tally()
        start = time.monotonic()
        try:
            large = large_requests()
            threads = []
            per_worker = [requests // workers + (1 if i < requests % workers else 0) for i in range(workers)]
            for i in range(workers):
                extra = large[i::workers]
                threads.append(threading.Thread(target=worker, args=(port, random.Random(seed + i), per_worker[i],
                                                                     start + time_limit, tally, extra, token)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - start
            is_alive = alive(port, proc, token)
        finally:
            proc.kill()
            proc.wait(10)
        log_text = log_path.read_text(errors="replace")
    total = sum(tally.status.values()) + len(tally.timeouts) + len(tally.connection_errors)
    report: dict[str, Any] = {
        "seed": seed, "auth_token": token is not None, "requests": total, "seconds": round(elapsed, 1),
        "status": dict(sorted(tally.status.items())), "5xx": len(tally.server_errors),
        "timeouts": len(tally.timeouts), "connection_errors": len(tally.connection_errors), "alive": is_alive,
    }
    if tally.server_errors or tally.timeouts or tally.connection_errors or not is_alive:
        report["reproducers"] = (tally.server_errors + tally.timeouts + tally.connection_errors)[:30]
        report["server_tracebacks"] = tracebacks(log_text)
    return report


def tracebacks(log_text: str, limit: int = 10) -> list[str]:
    """The server's logged errors with their tracebacks, one per distinct final line."""
    blocks: list[list[str]] = []
    for line in log_text.splitlines():
        if " ERROR " in line or " CRITICAL " in line:
            blocks.append([line])
        elif blocks and not line[:4].isdigit():
            blocks[-1].append(line[:300])
    seen: dict[str, str] = {}
    for block in blocks:
        seen.setdefault(block[-1][:200], "\n".join(block[:1] + block[-12:]))
    return list(seen.values())[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds; the campaign stops then")
    parser.add_argument("--auth", action="store_true",
                        help="serve with an auth token; most requests carry it, some a wrong one or none")
    args = parser.parse_args(argv)
    token = f"fuzz-{uuid.uuid4().hex}" if args.auth else None
    report = run(args.seed, args.requests, args.workers, args.time_limit, token)
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    ok = report["5xx"] == 0 and report["timeouts"] == 0 and report["connection_errors"] == 0 and report["alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
