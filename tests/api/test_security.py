"""Security defaults: path traversal, cross-origin and Host checks, auth, upload limits."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import websocket
from pydantic import ValidationError

import main as loom_main
from engine.api import security
from engine.settings import Settings
from tests.api.conftest import TIMEOUT, LiveServer, chain_prompt, png_bytes, recv_json
from tests.api.test_routes import assert_error_schema

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def secret(server: LiveServer) -> Path:
    """A file next to (outside) the input/output/temp folders, and symlinks pointing at it."""
    root = server.settings.output_dir.parent
    path = root / "secret.txt"
    path.write_text("top secret")
    for folder in (server.settings.output_dir, server.settings.input_dir):
        link = folder / "link.png"
        if not link.exists():
            link.symlink_to(path)
        linkdir = folder / "linkdir"
        if not linkdir.exists():
            linkdir.symlink_to(root)
    return path


VIEW_REFUSED = [
    ("filename=../secret.txt", 400),
    ("filename=..%2Fsecret.txt", 400),
    ("filename=%2e%2e%2fsecret.txt", 400),
    ("filename=%252e%252e%252fsecret.txt", 400),
    ("filename=%2E%2E/%2E%2E/secret.txt&subfolder=a", 400),
    ("filename=secret.txt&subfolder=..", 400),
    ("filename=secret.txt&subfolder=%2e%2e", 400),
    ("filename=secret.txt&subfolder=a/../..", 400),
    ("filename=/etc/passwd", 400),
    ("filename=secret.txt&subfolder=/tmp", 400),
    ("filename=..%5Csecret.txt", 400),
    ("filename=secret.txt&subfolder=..%5C", 400),
    ("filename=secret.txt%00.png", 400),
    ("filename=C:/Windows/win.ini", 400),
    ("filename=link.png", 403),
    ("filename=secret.txt&subfolder=linkdir", 403),
    ("filename=secret.txt&type=..", 400),
    ("filename=secret.txt&type=models", 400),
    ("filename=", 400),
    ("type=output", 400),
    ("filename=missing.png", 404),
]


@pytest.mark.parametrize(("query", "status"), VIEW_REFUSED)
def test_view_refuses_escapes(server: LiveServer, secret: Path, query: str, status: int) -> None:
    for prefix in ("", "/api"):
        reply = server.get(f"{prefix}/view?{query}")
        assert reply.status == status, (query, reply.body)
        assert b"top secret" not in reply.body
        assert_error_schema(reply.json())


def test_view_serves_files_safely(server: LiveServer) -> None:
    out = server.settings.output_dir
    (out / "sub").mkdir(exist_ok=True)
    (out / "sub" / "pic.png").write_bytes(png_bytes((5, 4)))
    (out / "page.html").write_text("<script>alert(1)</script>")
    (out / "pic.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    (out / "app.js").write_text("alert(1)")
    reply = server.get("/view?filename=pic.png&subfolder=sub&type=output")
    assert reply.status == 200 and reply.body == (out / "sub" / "pic.png").read_bytes()
    assert reply.headers["Content-Type"] == "image/png"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Content-Disposition"].startswith('inline; filename="pic.png"')
    annotated = server.get("/view?filename=pic.png%20%5Boutput%5D&subfolder=sub&type=input")
    assert annotated.status == 200
    for name in ("page.html", "pic.svg", "app.js"):
        reply = server.get(f"/view?filename={name}")
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/octet-stream", name
        assert reply.headers["Content-Disposition"].startswith("attachment")
        assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_view_channels_and_preview(server: LiveServer) -> None:
    import io

    from PIL import Image

    out = server.settings.output_dir
    (out / "rgba.png").write_bytes(png_bytes((6, 5), (10, 20, 30, 128)))
    rgb = Image.open(io.BytesIO(server.get("/view?filename=rgba.png&channel=rgb").body))
    assert rgb.mode == "RGB" and rgb.size == (6, 5)
    alpha = Image.open(io.BytesIO(server.get("/view?filename=rgba.png&channel=a").body))
    assert alpha.mode == "RGBA" and alpha.getpixel((0, 0))[3] == 128
    preview = server.get("/view?filename=rgba.png&preview=jpeg;80")
    assert preview.headers["Content-Type"] == "image/jpeg" and preview.body[:2] == b"\xff\xd8"
    assert server.get("/view?filename=rgba.png&preview=bmp;80").status == 400
    (out / "notes.txt").write_text("text")
    assert server.get("/view?filename=notes.txt&channel=rgb").status == 400


def test_upload_sanitizes_filenames(server: LiveServer, secret: Path) -> None:
    data = png_bytes((3, 3), (1, 2, 3, 255))
    for name in ("../../evil.png", "..\\..\\evil.png", "/tmp/evil.png"):
        reply = server.upload("/upload/image", data, name)
        assert reply.status == 200, reply.body
        assert reply.json() == {"name": "evil.png", "subfolder": "", "type": "input"}
    assert (server.settings.input_dir / "evil.png").read_bytes() == data
    assert not (secret.parent / "evil.png").exists() and not Path("/tmp/evil.png").exists()


@pytest.mark.parametrize(("fields", "status"), [
    ({"subfolder": "../x"}, 400), ({"subfolder": "/tmp"}, 400), ({"subfolder": "%2e%2e"}, 400),
    ({"subfolder": "..\\x"}, 400), ({"subfolder": "a/../../x"}, 400), ({"subfolder": "linkdir"}, 403),
    ({"type": "models"}, 400), ({"type": "../output"}, 400),
])
def test_upload_refuses_escapes(server: LiveServer, secret: Path, fields: dict[str, str], status: int) -> None:
    before = sorted(os.listdir(secret.parent))
    reply = server.upload("/upload/image", png_bytes(), "x.png", fields=fields)
    assert reply.status == status, reply.body
    assert_error_schema(reply.json())
    assert sorted(os.listdir(secret.parent)) == before


def test_mask_original_ref_cannot_escape(server: LiveServer, secret: Path) -> None:
    for ref in ('{"filename": "../secret.txt", "type": "input"}', '{"filename": "link.png", "type": "input"}',
                '{"filename": "x.png", "type": "input", "subfolder": "/etc"}', "not json", "[]"):
        reply = server.upload("/upload/mask", png_bytes(), "mask.png", fields={"original_ref": ref})
        assert reply.status in (400, 403), (ref, reply.body)
        assert_error_schema(reply.json())


# --------------------------------------------------------------------------- origin and host


def test_cross_origin_requests_refused(server: LiveServer) -> None:
    same = f"http://127.0.0.1:{server.port}"
    ok = server.post("/prompt", {"prompt": chain_prompt(2001)}, headers={"Origin": same})
    assert ok.status == 200
    for origin in ("http://evil.example", f"http://evil.example:{server.port}", f"http://localhost:{server.port}",
                   "http://127.0.0.1:1", f"https://127.0.0.1:{server.port}0", "null", "garbage"):
        reply = server.post("/prompt", {"prompt": chain_prompt(2002)}, headers={"Origin": origin})
        assert reply.status == 403, origin
        assert_error_schema(reply.json(), "forbidden_origin")
    assert server.get("/object_info", headers={"Origin": "http://evil.example"}).status == 403
    same_upload = server.upload("/upload/image", png_bytes(), "o.png", headers={"Origin": same})
    assert same_upload.status == 200
    assert server.upload("/upload/image", png_bytes(), "o.png",
                         headers={"Origin": "http://evil.example"}).status == 403


def test_cross_origin_websocket_refused(server: LiveServer) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws?clientId=x"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, origin="http://evil.example", timeout=TIMEOUT)
    assert refused.value.status_code == 403
    ws = websocket.create_connection(url, origin=f"http://127.0.0.1:{server.port}", timeout=TIMEOUT)
    assert recv_json(ws)["type"] == "status"
    ws.close()


def test_bad_host_refused(server: LiveServer) -> None:
    for host in ("evil.example", f"evil.example:{server.port}", "192.168.1.10", "127.0.0.1.evil.example"):
        reply = server.get("/prompt", headers={"Host": host})
        assert reply.status == 403, host
        assert_error_schema(reply.json(), "forbidden_host")
    for host in (f"localhost:{server.port}", "127.0.0.1", "[::1]:8188", "LOCALHOST", "app.localhost:1"):
        assert server.get("/prompt", headers={"Host": host}).status == 200, host
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws", host="evil.example", timeout=TIMEOUT)


def test_allowed_origins_get_cors(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(allowed_origins=("http://localhost:5173",))
    reply = live.post("/prompt", {"prompt": chain_prompt(1)}, headers={"Origin": "http://localhost:5173"})
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    preflight = live.request("OPTIONS", "/prompt", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204 and "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert live.get("/prompt", headers={"Origin": "http://localhost:5174"}).status == 403


# --------------------------------------------------------------------------- auth


def test_auth_token_enforced(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(auth_token=TOKEN)
    for path in ("/prompt", "/api/object_info", "/queue", "/openapi.json", "/view?filename=x.png"):
        reply = live.get(path, auth=False)
        assert reply.status == 401, path
        assert_error_schema(reply.json(), "unauthorized")
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = live.get("/prompt", auth=False, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert live.get("/prompt", auth=False, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"}).status == 401
    assert live.get("/prompt").status == 200
    assert live.post("/prompt", {"prompt": chain_prompt(1)}, auth=False).status == 401
    assert live.post(f"/prompt?token={TOKEN}", {"prompt": chain_prompt(1)}, auth=False).status == 401
    assert live.post("/prompt", {"prompt": chain_prompt(1)}).status == 200
    (live.settings.output_dir / "x.png").write_bytes(png_bytes())
    assert live.get(f"/view?filename=x.png&token={TOKEN}", auth=False).status == 200
    assert live.get("/", auth=False).status == 200  # the editor loads without the token
    assert live.get("/frontend/missing.js", auth=False).status == 404
    assert live.upload("/upload/image", png_bytes(), "a.png", auth=False).status == 401


def test_tokens_are_compared_in_constant_time(make_server: Callable[..., LiveServer],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    constant_time = hmac.compare_digest

    def recording_compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", recording_compare)
    live = make_server(auth_token=TOKEN)
    assert live.get("/prompt").status == 200
    assert live.get("/prompt", auth=False, headers={"Authorization": "Bearer wrong"}).status == 401
    assert compared == [(TOKEN.encode(), TOKEN.encode()), (b"wrong", TOKEN.encode())]


@pytest.mark.parametrize("token", [" ", "", "short-token", "s3cret token 0123456789", "s3cret-token-0123456789\n"])
def test_weak_auth_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(host="0.0.0.0", auth_token=token)
    message = str(refused.value)
    assert "auth token" in message and ("16 characters" in message or "whitespace" in message)
    if token.strip():
        assert token.strip() not in message  # the refusal never echoes the token


def test_whitespace_token_does_not_start_a_network_server(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    served: list[Settings] = []
    monkeypatch.setattr(loom_main, "serve", lambda settings, registry: served.append(settings))
    monkeypatch.delenv("LOOM_AUTH_TOKEN", raising=False)
    assert loom_main.main(["--listen", "0.0.0.0", "--auth-token", " "]) == 2
    assert served == []
    assert "auth token is too short" in capsys.readouterr().err


def _access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[str]:
    """The access log lines of a live server (written after each response, on the server's thread)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} access log lines: {caplog.records}")


def test_access_log_never_contains_the_token(make_server: Callable[..., LiveServer],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    live = make_server(auth_token=TOKEN)
    (live.settings.output_dir / "x.png").write_bytes(png_bytes())
    assert live.get(f"/view?filename=x.png&token={TOKEN}&type=output", auth=False).status == 200
    assert live.get(f"/api/view?%74oken={TOKEN}&filename=x.png", auth=False).status == 200
    assert live.get("/prompt", headers={"Referer": f"http://127.0.0.1/?token={TOKEN}"}).status == 200
    assert live.get("/prompt?token=wrong-guess", auth=False).status == 401
    lines = _access_lines(caplog, 4)
    assert all(TOKEN not in line and "wrong-guess" not in line for line in lines), lines
    assert any('"GET /view?filename=x.png&token=REDACTED&type=output HTTP/1.1" 200' in line for line in lines), lines
    assert any("/api/view?%74oken=REDACTED&filename=x.png" in line for line in lines), lines
    assert any('"GET /prompt?token=REDACTED HTTP/1.1" 401' in line for line in lines), lines


def test_auth_token_on_websocket(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(auth_token=TOKEN)
    base = f"ws://127.0.0.1:{live.port}/ws?clientId=auth"
    for url in (base, base + "&token=wrong"):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(url, timeout=TIMEOUT)
        assert refused.value.status_code == 401
    ws = websocket.create_connection(base + f"&token={TOKEN}", timeout=TIMEOUT)
    assert recv_json(ws)["data"]["sid"] == "auth"
    ws.close()
    ws = websocket.create_connection(base, header=[f"Authorization: Bearer {TOKEN}"], timeout=TIMEOUT)
    assert recv_json(ws)["type"] == "status"
    ws.close()


# --------------------------------------------------------------------------- upload limits


def test_upload_size_and_pixel_limits(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(max_upload_bytes=100_000, max_image_pixels=10_000)
    noise = os.urandom(120_000)
    streamed = live.upload("/upload/image", noise, "big.png")  # over the limit, under the early check
    assert streamed.status == 413
    assert_error_schema(streamed.json(), "payload_too_large")
    early = live.upload("/upload/image", os.urandom(400_000), "huge.png")
    assert early.status == 413
    many_pixels = png_bytes((200, 100), (0, 0, 0, 255))
    assert len(many_pixels) < 100_000
    reply = live.upload("/upload/image", many_pixels, "wide.png")
    assert reply.status == 413
    assert_error_schema(reply.json(), "image_too_large")
    assert live.upload("/upload/image", png_bytes((100, 100)), "ok.png").status == 200
    not_image = live.upload("/upload/image", b"<html>not an image</html>", "fake.png")
    assert not_image.status == 400
    assert_error_schema(not_image.json(), "invalid_image")
    truncated = live.upload("/upload/image", png_bytes((50, 50))[:-30], "cut.png")
    assert truncated.status == 400
    assert not (live.settings.input_dir / "big.png").exists()
    assert not (live.settings.input_dir / "fake.png").exists()
    assert live.get("/prompt").status == 200
