"""The informational routes ComfyUI's frontend reads (engine/api/routes/comfyui.py) on a real server: ComfyUI's
shapes, the model browser's file lists, the newest-first file lists, and the token guarding them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from tests.api.conftest import LiveServer

TOKEN = "a-long-enough-token-for-the-tests-0123"


def test_empty_registries_answer_as_comfyui_without_custom_nodes(server: LiveServer) -> None:
    for path in ("/i18n", "/node_replacements", "/global_subgraphs", "/workflow_templates"):
        for prefix in ("", "/api"):
            reply = server.get(prefix + path)
            assert reply.status == 200 and json.loads(reply.body) == {}, prefix + path


def test_the_model_browser_lists_kinds_and_model_files(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    checkpoints = live.settings.models_dirs[0] / "checkpoints"
    (checkpoints / "sub").mkdir(parents=True)
    (checkpoints / "sub" / "x.safetensors").write_bytes(b"1234")
    (checkpoints / ".hidden.safetensors").write_bytes(b"")
    (checkpoints / "notes.txt").write_text("not a model")
    kinds = {entry["name"]: entry for entry in json.loads(live.get("/api/experiment/models").body)}
    assert "configs" not in kinds and kinds["checkpoints"]["folders"] == [str(checkpoints)]
    assert ".safetensors" in kinds["checkpoints"]["extensions"]
    [model] = json.loads(live.get("/api/experiment/models/checkpoints").body)
    assert model["name"] == "sub/x.safetensors" and model["pathIndex"] == 0 and model["size"] == 4
    assert model["modified"] > 0 and model["created"] > 0
    missing = live.get("/api/experiment/models/not_a_folder")
    assert missing.status == 404 and json.loads(missing.body)["error"]
    paths = json.loads(live.get("/internal/folder_paths").body)
    assert paths["checkpoints"] == [str(checkpoints)] and "loras" in paths


def test_internal_files_are_newest_first_and_kinds_are_checked(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    output = live.settings.output_dir
    for index, name in enumerate(("old.png", "new.png")):
        (output / name).write_bytes(b"x")
        os.utime(output / name, (time.time() - 100 + index * 50,) * 2)
    (output / ".hidden.png").write_bytes(b"x")
    assert json.loads(live.get("/internal/files/output").body) == ["new.png", "old.png"]
    assert live.get("/internal/files/models").status == 400
    assert json.loads(live.get("/internal/logs/raw").body)["entries"] == []


def test_the_token_guards_them(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(auth_token=TOKEN)
    for path in ("/api/experiment/models", "/internal/folder_paths", "/internal/files/output", "/i18n"):
        assert live.get(path, auth=False).status == 401, path
        assert live.get(path).status == 200, path
