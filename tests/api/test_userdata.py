"""Users, settings and user data files (engine/api/routes/userdata.py) on a real server, in ComfyUI's shapes:

* ``GET /users``: ``{"storage": "server", "migrated": bool}`` (single user) or ``{"storage": "server",
  "users": {id: name}}`` (multi-user); ``POST /users {"username"}`` replies the new id as a JSON string, or
  400 ``{"error": "..."}``.
* ``GET /settings``: one JSON object; ``GET /settings/{id}``: the value or null; ``POST /settings`` (object,
  merged) and ``POST /settings/{id}`` (any value) reply 200 with an empty body.
* ``GET /userdata?dir=``: paths relative to ``dir``; ``split``: ``[path, *parts]``; ``full_info``:
  ``{path, size, modified, created}`` (milliseconds). ``GET /v2/userdata``: ``{name, path, type}`` entries
  (files with ``size`` and ``modified`` in seconds), folders first.
* ``POST /userdata/{file}``: the path relative to the user's folder as a JSON string (or the file info);
  409 when it exists and ``overwrite=false``. ``DELETE``: 204. ``POST .../move/{dest}``: like POST.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import main as loom_main
from engine.userdata import DEFAULT_SETTINGS, SETTINGS_FILE, UserData
from tests.api.conftest import TIMEOUT, LiveServer, Reply
from tests.api.contract import Contract
from tests.api.test_routes import assert_error_schema

TOKEN = "userdata-token-0123456789abcdef"
PREFIXES = ("", "/api")


def user_folder(live: LiveServer, user: str = "default") -> Path:
    return live.settings.user_dir / user


def as_user(user: str) -> dict[str, str]:
    return {"Comfy-User": user}


def put(live: LiveServer, rel: str, data: bytes, query: str = "", headers: dict[str, str] | None = None) -> Reply:
    return live.request("POST", f"/userdata/{rel.replace('/', '%2F')}{query}", body=data, headers=headers)


@pytest.fixture(scope="module")
def contract(server: LiveServer) -> Contract:
    return Contract(server.get("/openapi.json").json())


def assert_documented(contract: Contract, path: str, method: str, reply: Reply) -> None:
    assert contract.reply_errors(path, method, reply) == []


# --------------------------------------------------------------------------- settings


def test_settings_start_with_loom_defaults_and_merge_what_is_posted(server: LiveServer, contract: Contract) -> None:
    for prefix in PREFIXES:
        settings = server.get(f"{prefix}/settings")
        assert settings.status == 200 and settings.json()["Comfy.Notification.ShowVersionUpdates"] is False
        assert_documented(contract, f"{prefix}/settings", "get", settings)
        unset = server.get(f"{prefix}/settings/Comfy.NoSuchSetting")
        assert unset.status == 200 and unset.json() is None
    merged = server.post("/settings", {"Comfy.Locale": "fr", "Comfy.Nested": {"a": [1, 2]}})
    assert merged.status == 200 and merged.body == b""
    assert_documented(contract, "/settings", "post", merged)
    one = server.request("POST", "/api/settings/Comfy.Sidebar.Size", body=b'"small"')  # no Content-Type, as ComfyUI's
    assert one.status == 200 and one.body == b""
    assert_documented(contract, "/api/settings/{id}", "post", one)
    assert server.post("/settings", {"Comfy.Notification.ShowVersionUpdates": True}).status == 200
    settings = server.get("/settings").json()
    assert settings["Comfy.Locale"] == "fr" and settings["Comfy.Nested"] == {"a": [1, 2]}
    assert settings["Comfy.Sidebar.Size"] == "small"
    assert settings["Comfy.Notification.ShowVersionUpdates"] is True, "a stored value overrides Loom's default"
    assert server.get("/settings/Comfy.Locale").json() == "fr"
    assert server.get("/api/settings/Comfy.Nested").json() == {"a": [1, 2]}
    stored = json.loads((user_folder(server) / SETTINGS_FILE).read_text())
    assert stored["Comfy.Locale"] == "fr" and stored["Comfy.Notification.ShowVersionUpdates"] is True
    assert (user_folder(server) / SETTINGS_FILE).read_text().startswith('{\n    "'), "indented as ComfyUI writes it"


def test_only_posted_settings_are_stored(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    assert live.get("/settings").json() == dict(DEFAULT_SETTINGS)
    assert not (user_folder(live) / SETTINGS_FILE).exists(), "reading stores nothing"
    assert live.post("/settings/Comfy.Locale", "de").status == 200
    assert json.loads((user_folder(live) / SETTINGS_FILE).read_text()) == {"Comfy.Locale": "de"}


@pytest.mark.parametrize(("url", "body", "kind"), [
    ("/settings", b"[1, 2]", "invalid_request"),
    ("/settings", b'"text"', "invalid_request"),
    ("/settings", b"{not json", "invalid_json"),
    ("/settings", b"", "invalid_json"),
    ("/settings", b'{"a": NaN}', "invalid_json"),
    ("/settings/Comfy.Locale", b"", "invalid_json"),
    ("/settings/Comfy.Locale", b"undefined", "invalid_json"),
])
def test_bad_settings_bodies_are_refused(server: LiveServer, contract: Contract, url: str, body: bytes,
                                         kind: str) -> None:
    before = server.get("/settings").json()
    reply = server.request("POST", url, body=body)
    assert reply.status == 400
    assert_error_schema(reply.json(), kind)
    assert_documented(contract, url if url == "/settings" else "/settings/{id}", "post", reply)
    assert server.get("/settings").json() == before


def test_settings_persist_across_a_restart(make_server: Callable[..., LiveServer]) -> None:
    first = make_server()
    assert first.post("/settings", {"Comfy.Locale": "ja", "Comfy.Notification.ShowVersionUpdates": True}).status == 200
    assert first.post("/settings/Comfy.Graph.ZoomSpeed", 1.25).status == 200
    second = make_server(user_dir=first.settings.user_dir)  # a new server process on the same folders
    settings = second.get("/settings").json()
    assert settings["Comfy.Locale"] == "ja" and settings["Comfy.Graph.ZoomSpeed"] == 1.25
    assert settings["Comfy.Notification.ShowVersionUpdates"] is True


def test_an_unreadable_settings_file_reads_as_defaults_and_is_kept(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    path = user_folder(live) / SETTINGS_FILE
    path.parent.mkdir(parents=True)
    path.write_text('{"Comfy.Locale": "fr", ')
    reply = live.get("/settings")
    assert reply.status == 200 and reply.json() == dict(DEFAULT_SETTINGS)
    assert live.post("/settings", {"Comfy.Locale": "it"}).status == 200
    assert json.loads(path.read_text()) == {"Comfy.Locale": "it"}
    [kept] = path.parent.glob(f"{SETTINGS_FILE}.corrupt-*")
    assert kept.read_text() == '{"Comfy.Locale": "fr", ', "the broken file is kept beside, not lost"


def test_the_default_settings_turn_off_what_reaches_outside_hosts() -> None:
    # ComfyUI's frontend fetches release notes from api.comfy.org only while this setting is on (its default).
    assert DEFAULT_SETTINGS == {"Comfy.Notification.ShowVersionUpdates": False}


# --------------------------------------------------------------------------- users


def test_a_single_user_server_answers_users_as_comfyui(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    contract = Contract(live.get("/openapi.json").json())
    for prefix in PREFIXES:
        reply = live.get(f"{prefix}/users")
        assert reply.status == 200 and reply.json() == {"storage": "server", "migrated": False}
        assert_documented(contract, f"{prefix}/users", "get", reply)
    assert put(live, "a.json", b"{}").status == 200
    assert live.get("/users").json() == {"storage": "server", "migrated": True}
    refused = live.post("/users", {"username": "alice"})
    assert refused.status == 400 and set(refused.json()) == {"error"} and "--multi-user" in refused.json()["error"]
    assert_documented(contract, "/users", "post", refused)
    assert not (live.settings.user_dir / "users.json").exists()
    # the Comfy-User header means nothing to a single-user server (ComfyUI's frontend always sends it)
    assert put(live, "b.json", b"{}", headers=as_user("someone")).status == 200
    assert (user_folder(live) / "b.json").is_file()
    assert live.get("/settings", headers=as_user("")).status == 200


def test_a_multi_user_server_adds_users_by_comfyuis_rules(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(multi_user=True)
    contract = Contract(live.get("/openapi.json").json())
    empty = live.get("/users")
    assert empty.json() == {"storage": "server", "users": {}}
    assert_documented(contract, "/users", "get", empty)
    created = live.post("/api/users", {"username": "Alice Smith!"})
    assert created.status == 200
    assert_documented(contract, "/api/users", "post", created)
    alice = created.json()
    assert re.fullmatch(r"Alice-Smith-_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", alice), alice
    for name, message in (("Alice Smith!", "Duplicate username."), ("   ", "username not provided"),
                          ("__system", "System User prefix not allowed"), ("x" * 101, "longer than")):
        refused = live.post("/users", {"username": name})
        assert refused.status == 400 and message in refused.json()["error"], (name, refused.body)
        assert_documented(contract, "/users", "post", refused)
    malformed = live.post("/users", {"name": "no username"})
    assert malformed.status == 400
    assert_error_schema(malformed.json(), "invalid_request")
    assert live.get("/users").json() == {"storage": "server", "users": {alice: "Alice Smith!"}}
    assert json.loads((live.settings.user_dir / "users.json").read_text()) == {alice: "Alice Smith!"}
    again = make_server(multi_user=True, user_dir=live.settings.user_dir)
    assert again.get("/users").json()["users"] == {alice: "Alice Smith!"}, "users survive a restart"


def test_the_comfy_user_header_keeps_users_apart(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(multi_user=True)
    alice, bob = (live.post("/users", {"username": name}).json() for name in ("alice", "bob"))
    assert put(live, "workflows/plan.json", b'{"owner": "alice"}', headers=as_user(alice)).status == 200
    assert live.post("/settings", {"Comfy.Locale": "fr"}, headers=as_user(alice)).status == 200
    assert (live.settings.user_dir / alice / "workflows" / "plan.json").read_bytes() == b'{"owner": "alice"}'
    assert live.get("/userdata/workflows%2Fplan.json", headers=as_user(alice)).body == b'{"owner": "alice"}'
    assert live.get("/userdata/workflows%2Fplan.json", headers=as_user(bob)).status == 404
    assert live.get("/userdata?dir=workflows", headers=as_user(bob)).status == 404
    assert live.get("/v2/userdata", headers=as_user(bob)).json() == []
    assert live.get("/settings/Comfy.Locale", headers=as_user(alice)).json() == "fr"
    assert live.get("/settings/Comfy.Locale", headers=as_user(bob)).json() is None
    assert put(live, "workflows/plan.json", b'{"owner": "bob"}', "?overwrite=false", as_user(bob)).status == 200
    assert live.get("/userdata/workflows%2Fplan.json", headers=as_user(alice)).body == b'{"owner": "alice"}'
    for who in (None, "", "carol", "__system", f"../{alice}", alice.upper()):
        headers = as_user(who) if who is not None else None
        settings = live.get("/settings", headers=headers)
        assert settings.status == 401, who  # ComfyUI answers an unknown user's settings with 401
        assert_error_schema(settings.json(), "unknown_user")
        files = live.get("/userdata/workflows%2Fplan.json", headers=headers)
        assert files.status == 403 and b"owner" not in files.body, who
        assert_error_schema(files.json(), "unknown_user")
        assert put(live, "x.json", b"{}", headers=headers).status == 403
    assert sorted(p.name for p in live.settings.user_dir.iterdir()) == sorted([alice, bob, "users.json"])


# --------------------------------------------------------------------------- files


def test_files_are_written_read_and_overwritten_as_comfyui(server: LiveServer, contract: Contract) -> None:
    for prefix in PREFIXES:
        name = f"rw{prefix.replace('/', '-')}.json"
        written = server.request("POST", f"{prefix}/userdata/workflows%2F{name}", body=b'{"v": 1}')
        assert written.status == 200 and written.json() == f"workflows/{name}"
        assert_documented(contract, f"{prefix}/userdata/{{file}}", "post", written)
        read = server.get(f"{prefix}/userdata/workflows%2F{name}")
        assert read.status == 200 and read.body == b'{"v": 1}'
        assert_documented(contract, f"{prefix}/userdata/{{file}}", "get", read)
        assert read.headers["Content-Type"] == "application/json"
        assert read.headers["Content-Disposition"].startswith("attachment")
        assert read.headers["X-Content-Type-Options"] == "nosniff"
        kept = server.request("POST", f"{prefix}/userdata/workflows%2F{name}?overwrite=false", body=b"{}")
        assert kept.status == 409
        assert_error_schema(kept.json(), "already_exists")
        assert_documented(contract, f"{prefix}/userdata/{{file}}", "post", kept)
        assert server.get(f"{prefix}/userdata/workflows%2F{name}").body == b'{"v": 1}'
        replaced = server.request("POST", f"{prefix}/userdata/workflows%2F{name}?full_info=true", body=b"[2]")
        info = replaced.json()
        assert replaced.status == 200 and set(info) == {"path", "size", "modified", "created"}
        assert info["path"] == f"workflows/{name}" and info["size"] == 3
        assert abs(info["modified"] / 1000 - time.time()) < 60, "milliseconds since the epoch"
        assert_documented(contract, f"{prefix}/userdata/{{file}}", "post", replaced)
        assert server.get(f"{prefix}/userdata/workflows%2F{name}").body == b"[2]"
    missing = server.get("/userdata/workflows%2Fmissing.json")
    assert missing.status == 404
    assert_error_schema(missing.json(), "not_found")
    assert_documented(contract, "/userdata/{file}", "get", missing)


def test_json_files_are_stored_as_sent_without_validation(server: LiveServer) -> None:
    # ComfyUI stores the body as it is, whatever the ending; so does Loom.
    assert put(server, "notes/broken.json", b"{not json").status == 200
    assert server.get("/userdata/notes%2Fbroken.json").body == b"{not json"
    assert put(server, "notes/empty.txt", b"").status == 200
    assert (user_folder(server) / "notes" / "empty.txt").read_bytes() == b""


def test_served_files_never_run_in_the_servers_origin(server: LiveServer) -> None:
    assert put(server, "user.css", b"body { color: red }").status == 200
    css = server.get("/userdata/user.css")
    assert css.headers["Content-Type"] == "text/css" and css.headers["Content-Disposition"].startswith("inline")
    for name in ("page.html", "script.js", "image.svg", "sub/user.css"):
        assert put(server, name, b"<script>alert(1)</script>").status == 200
        reply = server.get(f"/userdata/{name.replace('/', '%2F')}")
        assert reply.status == 200 and reply.headers["Content-Type"] == "application/octet-stream", name
        assert reply.headers["Content-Disposition"].startswith("attachment"), name
        assert "sandbox" in reply.headers["Content-Security-Policy"]


@pytest.fixture(scope="module")
def tree(server: LiveServer) -> Path:
    """lists/a.json, lists/sub/b.json, lists/sub/deeper/c.txt and hidden files in the default user's folder."""
    for rel, data in (("lists/a.json", b"{}"), ("lists/sub/b.json", b"[1]"), ("lists/sub/deeper/c.txt", b"abc"),
                      ("lists/.hidden", b"x")):
        assert put(server, rel, data).status == 200
    (user_folder(server) / "lists" / ".git").mkdir()
    (user_folder(server) / "lists" / ".git" / "config").write_text("x")
    (user_folder(server) / "lists" / "empty").mkdir()
    return user_folder(server) / "lists"


def test_listing_files_with_recurse_split_and_full_info(server: LiveServer, contract: Contract, tree: Path) -> None:
    def listed(query: str) -> Any:
        for prefix in PREFIXES:
            reply = server.get(f"{prefix}/userdata?{query}")
            assert reply.status == 200, reply.body
            assert_documented(contract, f"{prefix}/userdata", "get", reply)
        return reply.json()

    assert listed("dir=lists") == ["a.json"]
    assert listed("dir=lists/&recurse=true") == ["a.json", "sub/b.json", "sub/deeper/c.txt"]
    assert listed("dir=lists&recurse=true&split=true") == [
        ["a.json", "a.json"], ["sub/b.json", "sub", "b.json"], ["sub/deeper/c.txt", "sub", "deeper", "c.txt"]]
    assert listed("dir=lists%2Fsub&recurse=TRUE&split=false") == ["b.json", "deeper/c.txt"]
    infos = listed("dir=lists&recurse=true&full_info=true&split=true")  # full_info wins over split
    assert [info["path"] for info in infos] == ["a.json", "sub/b.json", "sub/deeper/c.txt"]
    assert [info["size"] for info in infos] == [2, 3, 3]
    assert all(set(info) == {"path", "size", "modified", "created"} for info in infos)
    assert listed("dir=lists/empty") == []
    assert "lists/a.json" in listed("dir=.&recurse=true")
    for query, status in (("", 400), ("dir=", 400), ("dir=nothing-here", 404), ("dir=lists/a.json", 404)):
        reply = server.get(f"/userdata?{query}")
        assert reply.status == status, query
        assert_error_schema(reply.json())
        assert_documented(contract, "/userdata", "get", reply)


def test_listing_v2_gives_folders_first_with_their_files(server: LiveServer, contract: Contract, tree: Path) -> None:
    reply = server.get("/v2/userdata?path=lists")
    assert reply.status == 200
    assert_documented(contract, "/v2/userdata", "get", reply)
    entries = reply.json()
    assert [(e["type"], e["path"]) for e in entries] == [
        ("directory", "lists/sub/deeper"), ("directory", "lists/empty"), ("directory", "lists/sub"),
        ("file", "lists/a.json"), ("file", "lists/sub/b.json"), ("file", "lists/sub/deeper/c.txt")]
    folder = next(e for e in entries if e["path"] == "lists/sub")
    assert folder == {"name": "sub", "path": "lists/sub", "type": "directory"}
    file = next(e for e in entries if e["path"] == "lists/sub/b.json")
    assert file["name"] == "b.json" and file["size"] == 3 and abs(file["modified"] - time.time()) < 60
    everything = server.get("/api/v2/userdata").json()
    assert {"name": "lists", "path": "lists", "type": "directory"} in everything
    for query, status in (("?path=nothing-here", 404), ("?path=lists%2Fa.json", 400)):
        refused = server.get(f"/v2/userdata{query}")
        assert refused.status == status, query
        assert_documented(contract, "/v2/userdata", "get", refused)


def test_a_new_users_folder_lists_empty_in_v2(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    assert live.get("/v2/userdata").json() == []
    assert live.get("/userdata?dir=workflows").status == 404  # the frontend reads this 404 as no workflows


def test_move_renames_and_respects_overwrite(server: LiveServer, contract: Contract) -> None:
    assert put(server, "moves/a.json", b"A").status == 200
    assert put(server, "moves/b.json", b"B").status == 200
    taken = server.request("POST", "/userdata/moves%2Fa.json/move/moves%2Fb.json?overwrite=false")
    assert taken.status == 409
    assert_documented(contract, "/userdata/{file}/move/{dest}", "post", taken)
    assert server.get("/userdata/moves%2Fb.json").body == b"B"
    moved = server.request("POST", "/api/userdata/moves%2Fa.json/move/moves%2Fnew%2Fc.json")
    assert moved.status == 200 and moved.json() == "moves/new/c.json"
    assert_documented(contract, "/api/userdata/{file}/move/{dest}", "post", moved)
    assert server.get("/userdata/moves%2Fa.json").status == 404
    assert server.get("/userdata/moves%2Fnew%2Fc.json").body == b"A"
    replaced = server.request("POST", "/userdata/moves%2Fnew%2Fc.json/move/moves%2Fb.json?full_info=true")
    assert replaced.status == 200 and replaced.json()["path"] == "moves/b.json" and replaced.json()["size"] == 1
    assert server.get("/userdata/moves%2Fb.json").body == b"A"
    gone = server.request("POST", "/userdata/moves%2Fa.json/move/moves%2Fd.json")
    assert gone.status == 404
    assert_documented(contract, "/userdata/{file}/move/{dest}", "post", gone)


def test_delete_answers_204_then_404(server: LiveServer, contract: Contract) -> None:
    assert put(server, "trash/x.json", b"{}").status == 200
    for prefix in PREFIXES:
        assert put(server, "trash/x.json", b"{}").status == 200
        deleted = server.request("DELETE", f"{prefix}/userdata/trash%2Fx.json")
        assert deleted.status == 204 and deleted.body == b""
        assert_documented(contract, f"{prefix}/userdata/{{file}}", "delete", deleted)
        again = server.request("DELETE", f"{prefix}/userdata/trash%2Fx.json")
        assert again.status == 404
        assert_documented(contract, f"{prefix}/userdata/{{file}}", "delete", again)
    assert not (user_folder(server) / "trash" / "x.json").exists()
    assert server.request("DELETE", "/userdata/trash").status == 404, "a folder is not deleted"


def test_names_the_file_system_refuses_are_400(server: LiveServer) -> None:
    assert put(server, "plain.json", b"{}").status == 200
    for rel in ("plain.json/inside.json", "x" * 300 + ".json", "lists-folder/"):
        if rel == "lists-folder/":
            (user_folder(server) / "lists-folder").mkdir(exist_ok=True)
        reply = put(server, rel, b"{}")
        assert reply.status == 400, rel
        assert_error_schema(reply.json(), "invalid_path")


# --------------------------------------------------------------------------- confinement


@pytest.fixture(scope="module")
def outside(server: LiveServer) -> Iterator[Path]:
    """A secret next to the user folder, and links in the user's folder that point at it."""
    secret = server.settings.user_dir.parent / "secret.json"
    secret.write_text('{"secret": true}')
    folder = user_folder(server)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "link.json").symlink_to(secret)
    (folder / "linkdir").symlink_to(secret.parent)
    (folder / "inner.json").write_text('{"inner": true}')
    (folder / "innerlink.json").symlink_to(folder / "inner.json")
    yield secret
    assert secret.read_text() == '{"secret": true}', "nothing wrote through to the secret"


REFUSED: list[tuple[str, str, int]] = [
    ("GET", "/userdata/..%2Fsecret.json", 403),
    ("GET", "/userdata/%2e%2e%2Fsecret.json", 403),
    ("GET", "/userdata/..%2F..%2Fsecret.json", 403),
    ("GET", "/userdata/a%2F..%2F..%2Fsecret.json", 403),
    ("GET", "/userdata/%2Fetc%2Fpasswd", 403),
    ("GET", "/userdata/C:%2FWindows%2Fwin.ini", 403),
    ("GET", "/userdata/%252e%252e%252fsecret.json", 400),
    ("GET", "/userdata/..%5Csecret.json", 403),
    ("GET", "/userdata/a%5Cb.json", 400),
    ("GET", "/userdata/secret.json%00.png", 400),
    ("GET", "/userdata/link.json", 403),
    ("GET", "/userdata/linkdir%2Fsecret.json", 403),
    ("POST", "/userdata/..%2Fsecret.json", 403),
    ("POST", "/userdata/..%2Fnew.json", 403),
    ("POST", "/userdata/link.json", 403),
    ("POST", "/userdata/linkdir%2Fsecret.json", 403),
    ("POST", "/userdata/a%00.json", 400),
    ("DELETE", "/userdata/..%2Fsecret.json", 403),
    ("DELETE", "/userdata/link.json", 403),
    ("DELETE", "/userdata/linkdir%2Fsecret.json", 403),
    ("POST", "/userdata/inner.json/move/..%2Fmoved.json", 403),
    ("POST", "/userdata/inner.json/move/linkdir%2Fmoved.json", 403),
    ("POST", "/userdata/..%2Fsecret.json/move/stolen.json", 403),
    ("POST", "/userdata/link.json/move/stolen.json", 403),
    ("GET", "/userdata?dir=..", 403),
    ("GET", "/userdata?dir=%2Fetc", 403),
    ("GET", "/userdata?dir=linkdir", 403),
    ("GET", "/userdata?dir=a%00", 400),
    ("GET", "/v2/userdata?path=..", 403),
    ("GET", "/v2/userdata?path=linkdir", 403),
]


@pytest.mark.parametrize(("method", "url", "status"), REFUSED, ids=[f"{m} {u}" for m, u, _ in REFUSED])
def test_paths_stay_inside_the_users_folder(server: LiveServer, contract: Contract, outside: Path, method: str,
                                            url: str, status: int) -> None:
    for prefix in PREFIXES:
        reply = server.request(method, prefix + url, body=b'{"evil": true}' if method == "POST" else None)
        assert reply.status == status, (prefix + url, reply.body)
        assert b"secret" not in reply.body.replace(b"secret.json", b"") and b"true" not in reply.body
        assert_error_schema(reply.json())
        template = "/userdata/{file}/move/{dest}" if "/move/" in url else url.split("?")[0]
        template = "/userdata/{file}" if template.startswith("/userdata/") and "{" not in template else template
        assert_documented(contract, prefix + template, method.lower(), reply)
    assert not (outside.parent / "new.json").exists() and not (outside.parent / "moved.json").exists()
    assert (user_folder(server) / "link.json").is_symlink() and (user_folder(server) / "inner.json").is_file()


def test_links_inside_the_folder_are_followed_and_links_out_never_listed(server: LiveServer, outside: Path) -> None:
    assert server.get("/userdata/innerlink.json").body == b'{"inner": true}'
    listed = server.get("/userdata?dir=.&recurse=true").json()
    assert "innerlink.json" in listed and "inner.json" in listed
    assert not any("link.json" == name or name.startswith("linkdir") for name in listed)
    entries = {e["path"] for e in server.get("/v2/userdata").json()}
    assert "innerlink.json" in entries and "link.json" not in entries and "linkdir" not in entries


# --------------------------------------------------------------------------- limits and security


def _chunked_post(live: LiveServer, path: str, chunks: list[bytes]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=iter(chunks), encode_chunked=True)
        return conn.getresponse().status
    finally:
        conn.close()


def test_bodies_over_max_userdata_bytes_are_413(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(max_userdata_bytes=1000)
    contract = Contract(live.get("/openapi.json").json())
    doc = contract.doc["paths"]["/userdata/{file}"]["post"]
    assert doc["x-loom-max-body-bytes"] == 1000 and doc["x-loom-limits"] == {"max_userdata_bytes": 1000}
    assert put(live, "fits.bin", b"x" * 1000).status == 200
    too_large = put(live, "big.bin", b"x" * 1001)
    assert too_large.status == 413
    assert_error_schema(too_large.json(), "payload_too_large")
    assert_documented(contract, "/userdata/{file}", "post", too_large)
    assert _chunked_post(live, "/userdata/chunked.bin", [b"x" * 600, b"x" * 600]) == 413
    assert not (user_folder(live) / "big.bin").exists() and not (user_folder(live) / "chunked.bin").exists()
    assert put(live, "fits.bin", b"y" * 1001).status == 413
    assert live.get("/userdata/fits.bin").body == b"x" * 1000, "a refused overwrite leaves the file"
    big_setting = live.post("/settings/Comfy.Big", "z" * 1000)
    assert big_setting.status == 413
    assert_documented(contract, "/settings/{id}", "post", big_setting)
    for index in range(4):  # each body fits, but together the settings file would not
        status = live.post(f"/settings/Comfy.Part{index}", "p" * 400).status
        assert status == (200 if index < 2 else 413), index
    assert live.get("/settings/Comfy.Part1").json() == "p" * 400


def test_the_token_guards_every_storage_route(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(auth_token=TOKEN)
    guarded = [("GET", "/users"), ("POST", "/users"), ("GET", "/settings"), ("GET", "/settings/Comfy.Locale"),
               ("POST", "/settings"), ("POST", "/settings/Comfy.Locale"), ("GET", "/userdata?dir=."),
               ("GET", "/v2/userdata"), ("GET", "/userdata/user.css"), ("POST", "/userdata/x.json"),
               ("DELETE", "/userdata/x.json"), ("POST", "/userdata/x.json/move/y.json")]
    for method, url in guarded:
        for prefix in PREFIXES:
            refused = live.request(method, prefix + url, body=b'{"Comfy.Locale": "fr"}', auth=False)
            assert refused.status == 401, (method, prefix + url)
            assert_error_schema(refused.json(), "unauthorized")
            wrong = live.request(method, prefix + url, body=b"{}", headers={"Authorization": "Bearer wrong-token"})
            assert wrong.status == 401, (method, prefix + url)
    assert live.get(f"/userdata/user.css?token={TOKEN}", auth=False).status == 401, "no ?token= on user data"
    assert not live.settings.user_dir.exists(), "nothing was stored"
    assert put(live, "x.json", b"{}").status == 200
    assert live.get("/settings").status == 200


def test_foreign_origins_and_hosts_are_refused(server: LiveServer) -> None:
    before = server.get("/settings").json()
    for headers, kind in (({"Origin": "http://evil.example"}, "forbidden_origin"),
                          ({"Origin": "null"}, "forbidden_origin"),
                          ({"Host": "evil.example"}, "forbidden_host")):
        for method, url in (("POST", "/settings"), ("POST", "/userdata/evil.json"), ("GET", "/userdata/user.css"),
                            ("DELETE", "/userdata/user.css"), ("POST", "/users")):
            reply = server.request(method, url, body=b'{"Comfy.Locale": "evil"}', headers=headers)
            assert reply.status == 403, (headers, method, url)
            assert_error_schema(reply.json(), kind)
    assert server.get("/settings").json() == before
    assert not (user_folder(server) / "evil.json").exists()
    same_origin = server.get("/settings", headers={"Origin": server.url})
    assert same_origin.status == 200


def test_an_allowed_origin_may_send_the_comfy_user_header(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(allowed_origins=("http://localhost:5173",), multi_user=True)
    preflight = live.request("OPTIONS", "/api/settings", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "comfy-user, content-type"})
    assert preflight.status == 204
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"comfy-user", "content-type"} <= allowed
    user = live.post("/users", {"username": "remote"}, headers={"Origin": "http://localhost:5173"}).json()
    stored = live.post("/api/settings", {"Comfy.Locale": "es"},
                       headers={"Origin": "http://localhost:5173", "Comfy-User": user})
    assert stored.status == 200 and stored.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert live.get("/settings/Comfy.Locale", headers=as_user(user)).json() == "es"


# --------------------------------------------------------------------------- command line and storage


def test_the_command_line_sets_the_user_folder_and_multi_user(tmp_path: Path) -> None:
    settings = loom_main.settings_from(loom_main.parse_args(["--user-dir", str(tmp_path / "u"), "--multi-user"]))
    assert settings.user_dir == tmp_path / "u" and settings.multi_user is True
    default = loom_main.settings_from(loom_main.parse_args([]))
    assert default.user_dir == Path("user") and default.multi_user is False


def test_a_users_file_with_unusable_ids_keeps_only_the_usable_ones(tmp_path: Path) -> None:
    (tmp_path / "users.json").write_text(json.dumps({"ok_1": "ok", "../up": "x", "__sys": "y", "a/b": "z"}))
    data = UserData(tmp_path, multi_user=True, max_bytes=100)
    assert data.users() == {"ok_1": "ok"}
    assert data.user_id("ok_1") == "ok_1"
