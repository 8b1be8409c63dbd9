"""The informational routes ComfyUI's frontend reads (engine/api/routes/comfyui.py) on a real server: ComfyUI's
shapes, the model browser's file lists, the newest-first file lists, and the token guarding them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.api import comfyui_packages
from tests.api.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
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
    for path in ("/templates/index.json", "/docs/KSampler/en.md"):  # answered or 404 by what is installed
        assert live.get(path, auth=False).status == 401, path
        assert live.get(path).status in (200, 404), path


needs_templates = pytest.mark.skipif(
    importlib.util.find_spec("comfyui_workflow_templates_json") is None
    or importlib.util.find_spec("comfyui_embedded_docs") is None,
    reason="comfyui-workflow-templates / comfyui-embedded-docs missing: pip install -e '.[comfyui-frontend]'")


@needs_templates
def test_the_installed_templates_are_served_for_the_template_browser(server: LiveServer) -> None:
    index = server.get("/templates/index.json")
    assert index.status == 200 and index.headers["Content-Type"].startswith("application/json")
    templates = {t["name"]: t for category in json.loads(index.body) for t in category["templates"]}
    sdxl = templates["sdxl_simple_example"]
    workflow = server.get("/templates/sdxl_simple_example.json")
    assert workflow.status == 200
    assert {"CheckpointLoaderSimple", "KSamplerAdvanced"} <= {n["type"] for n in json.loads(workflow.body)["nodes"]}
    thumbnail = server.get(f"/templates/sdxl_simple_example-1.{sdxl['mediaSubtype']}")
    assert thumbnail.status == 200 and thumbnail.headers["Content-Type"] == f"image/{sdxl['mediaSubtype']}"
    assert len(thumbnail.body) > 1000
    logos = json.loads(server.get("/templates/index_logo.json").body)
    logo = next(iter(logos.values())) if isinstance(logos, dict) else None
    if isinstance(logo, str):  # a logo in a media package's logo/ folder
        assert server.get(f"/templates/{logo}").status == 200
    assert json.loads(server.get("/templates/index.fr.json").body)[0]["templates"]


@needs_templates
def test_node_docs_are_served_and_misses_are_plain_404s(server: LiveServer) -> None:
    doc = server.get("/docs/KSampler/en.md")
    assert doc.status == 200 and doc.headers["Content-Type"].startswith("text/markdown")
    assert "KSampler" in doc.body.decode()
    for path in ("/templates/no_such_template.json", "/docs/NoSuchNode/en.md", "/templates/..%2F..%2F__init__.py",
                 "/docs/..%2F__init__.py"):
        reply = server.get(path)
        assert reply.status == 404 and reply.headers["Content-Type"].startswith("text/plain"), path


@needs_templates
def test_system_stats_name_the_pinned_frontend_and_templates(server: LiveServer) -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = dict(pin.split("==") for pin in pins["comfyui-frontend"])
    stats = json.loads(server.get("/system_stats").body)["system"]
    assert stats["required_frontend_version"] == pinned["comfyui-frontend-package"]
    assert stats["required_templates_version"] == pinned["comfyui-workflow-templates"]
    assert stats["installed_templates_version"] == importlib.metadata.version("comfyui-workflow-templates")


def test_without_the_packages_templates_and_docs_are_404(make_server: Callable[..., LiveServer],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(comfyui_packages.importlib.util, "find_spec", lambda name: None)
    assert comfyui_packages.template_roots() == () and comfyui_packages.docs_root() is None
    assert comfyui_packages.installed_version("no-such-distribution-loom") == ""
    live = make_server()  # its routes find no package folders
    for path in ("/templates/index.json", "/docs/KSampler/en.md"):
        reply = live.get(path)
        assert reply.status == 404 and reply.headers["Content-Type"].startswith("text/plain"), path
    assert json.loads(live.get("/api/workflow_templates").body) == {}  # an empty map, never a JSON 404
