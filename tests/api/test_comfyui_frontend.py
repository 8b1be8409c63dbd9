"""``--frontend comfyui``: ComfyUI's official frontend served at ``/`` by a real server on loopback. A small
frontend folder written here checks the serving rules (MIME types, caching, plain 404s, the API's JSON 404s
kept, traversal, the token); the installed comfyui-frontend-package (an optional extra that ``make test``
installs) checks that its index.html and every file it loads are served. Loom's editor stays the default."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import websocket

from engine.api.comfyui_frontend import FrontendMissing, comfyui_static_root
from engine.api.security import TOKEN_COOKIE
from engine.settings import Settings
from tests.api.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-long-enough-token-for-the-tests-0123"


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A frontend build shaped like the package's static folder."""
    static = tmp_path / "comfy-static"
    (static / "assets").mkdir(parents=True)
    (static / "fonts").mkdir()
    (static / "index.html").write_text('<!doctype html><link href="user.css"><script src="./assets/app-1a2b.js">'
                                       "</script>")
    (static / "assets" / "app-1a2b.js").write_text("console.log('comfy')")
    (static / "assets" / "style-9f.css").write_text("body{}")
    (static / "fonts" / "x.woff2").write_bytes(b"wOF2")
    (tmp_path / "secret.txt").write_text("outside")
    return static


def test_the_build_is_served_at_the_root_with_types_caching_and_plain_404s(
        make_server: Callable[..., LiveServer], build: Path) -> None:
    loom_editor = build.parent / "loom-editor"
    loom_editor.mkdir()
    (loom_editor / "app.js").write_text("// Loom's editor")
    live = make_server(frontend="comfyui", comfyui_frontend_dir=build, frontend_dir=loom_editor)
    index = live.get("/")
    assert index.status == 200 and index.headers["Content-Type"].startswith("text/html")
    assert b"app-1a2b.js" in index.body and index.headers["Cache-Control"] == "no-cache"
    assert index.headers["Content-Security-Policy"] == "connect-src 'self'"  # the page may reach Loom only
    assert live.get("/index.html").headers["Content-Security-Policy"] == "connect-src 'self'"
    script = live.get("/assets/app-1a2b.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert "immutable" in script.headers["Cache-Control"]  # content-hashed names never change
    assert live.get("/assets/style-9f.css").headers["Content-Type"].startswith("text/css")
    assert live.get("/fonts/x.woff2").headers["Content-Type"] == "font/woff2"
    missing = live.get("/user.css")  # the page asks for it; a JSON body would be refused as CSS
    assert missing.status == 404 and missing.headers["Content-Type"].startswith("text/plain")
    assert live.get("/api/no-such-route").headers["Content-Type"].startswith("application/json")  # API's 404
    assert live.get("/../secret.txt").status == 404 and live.get("/%2e%2e/secret.txt").status == 404
    assert live.get("/object_info").status == 200  # every API route still answers first
    assert live.get("/frontend/app.js").body == b"// Loom's editor"  # Loom's editor keeps its own prefix


def test_static_files_need_no_token_but_the_api_does(make_server: Callable[..., LiveServer], build: Path) -> None:
    live = make_server(frontend="comfyui", comfyui_frontend_dir=build, auth_token=TOKEN)
    assert live.get("/", auth=False).status == 200
    assert live.get("/assets/app-1a2b.js", auth=False).status == 200
    assert live.get("/object_info", auth=False).status == 401
    assert live.get("/api/object_info", auth=False).status == 401
    assert live.get("/no-such-file.js", auth=False).status == 401  # not a static file: guarded like the API
    assert live.get("/object_info").status == 200


def test_a_browser_signs_in_once_with_the_token_in_the_address(make_server: Callable[..., LiveServer],
                                                                build: Path) -> None:
    live = make_server(frontend="comfyui", comfyui_frontend_dir=build, auth_token=TOKEN)
    wrong = live.get("/?token=not-the-token", auth=False)
    assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
    signed_in = live.get(f"/?token={TOKEN}", auth=False)
    assert signed_in.status == 303 and signed_in.headers["Location"] == "/"
    cookie = SimpleCookie(signed_in.headers["Set-Cookie"])[TOKEN_COOKIE]
    assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    with_cookie = {"Cookie": f"{TOKEN_COOKIE}={TOKEN}"}
    assert live.get("/object_info", auth=False, headers=with_cookie).status == 200
    assert live.get("/api/settings", auth=False, headers={"Cookie": f"{TOKEN_COOKIE}=wrong"}).status == 401
    assert live.get("/api/settings", headers={"Cookie": f"{TOKEN_COOKIE}=wrong"}).status == 200  # header still counts
    foreign = live.get("/api/settings", auth=False, headers={**with_cookie, "Origin": "http://evil.example"})
    assert foreign.status == 403
    ws = websocket.create_connection(f"ws://127.0.0.1:{live.port}/ws?clientId=c1", timeout=10,
                                     cookie=f"{TOKEN_COOKIE}={TOKEN}")
    try:
        assert json.loads(ws.recv())["type"] == "status"
    finally:
        ws.close()


def test_loom_editor_stays_the_default(make_server: Callable[..., LiveServer], build: Path) -> None:
    live = make_server()
    assert live.settings.frontend == "loom"
    assert live.get("/assets/app-1a2b.js").status == 404
    assert live.get("/").headers["Content-Type"].startswith("text/html")


def test_a_missing_frontend_is_named_before_the_server_starts(tmp_path: Path) -> None:
    with pytest.raises(FrontendMissing, match="holds no index.html"):
        comfyui_static_root(Settings(frontend="comfyui", comfyui_frontend_dir=tmp_path))
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--frontend", "comfyui", "--frontend-dir",
                             str(tmp_path), "--port", "0", "--data-dir", str(tmp_path / "data")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "holds no index.html" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("comfyui_frontend_package") is None,
                    reason="the optional comfyui-frontend-package is not installed (make test installs it)")
def test_the_installed_package_and_every_file_its_page_loads_are_served(
        make_server: Callable[..., LiveServer]) -> None:
    live = make_server(frontend="comfyui")
    index = live.get("/")
    assert index.status == 200
    page = index.body.decode()
    loaded = re.findall(r'(?:src|href)="(\./assets/[^"]+|[a-z][\w.-]*\.css)"', page)
    assert any(name.endswith(".js") for name in loaded)
    for name in loaded:
        if name == "user.css":  # the user's own stylesheet: absent until saved (a plain 404)
            assert live.get("/user.css").status == 404
            continue
        reply = live.get("/" + name.removeprefix("./"))
        assert reply.status == 200, name
