"""Every route answers at /x and /api/x with ComfyUI's shapes; static editor; OpenAPI covers all."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from engine.api.routes import operations
from engine.api.system_info import scrub_argv
from tests.api.conftest import LiveServer

PREFIXES = ("", "/api")

JSON_GETS = ["/prompt", "/queue", "/history", "/object_info", "/object_info/StubInt", "/system_stats",
             "/embeddings", "/models", "/models/checkpoints", "/features", "/extensions", "/openapi.json",
             "/history/no-such-prompt"]

NODE_INFO_KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
                  "description", "python_module", "category", "output_node"}


def assert_error_schema(body: dict[str, Any], kind: str | None = None) -> None:
    assert set(body) == {"error", "node_errors"}
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["extra_info"], dict)
    if kind is not None:
        assert body["error"]["type"] == kind, body


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("path", JSON_GETS)
def test_json_routes_at_both_prefixes(server: LiveServer, prefix: str, path: str) -> None:
    reply = server.get(prefix + path)
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    reply.json()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_post_routes_at_both_prefixes(server: LiveServer, prefix: str) -> None:
    for path, body in [("/queue", {"delete": ["nothing"]}), ("/history", {"delete": ["nothing"]}),
                       ("/interrupt", {}), ("/free", {"unload_models": False})]:
        assert server.post(prefix + path, body).status == 200, path
    bad = server.post(prefix + "/prompt", {"nothing": 1})
    assert bad.status == 400
    assert_error_schema(bad.json(), "no_prompt")


def test_get_prompt_and_queue_shapes(server: LiveServer) -> None:
    assert server.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert server.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_object_info_schema(server: LiveServer) -> None:
    info = server.get("/object_info").json()
    for name in ("EmptyImage", "ImageInvert", "SaveImage", "LoadImage", "StubInt", "StubShow"):
        assert name in info
    for name, entry in info.items():
        assert NODE_INFO_KEYS <= set(entry), name
        assert entry["name"] == name
        assert len(entry["output"]) == len(entry["output_is_list"]) == len(entry["output_name"])
        assert set(entry["input_order"]) <= set(entry["input"])
        for group, names in entry["input_order"].items():
            assert names == list(entry["input"][group])
        assert isinstance(entry["output_node"], bool)
    assert info["SaveImage"]["output_node"] is True and info["StubInt"]["output_node"] is False
    assert info["StubInt"]["input"]["required"]["value"][0] == "INT"
    assert info["StubInt"]["input"]["required"]["value"][1]["default"] == 0
    assert isinstance(info["LoadImage"]["input"]["required"]["image"][0], list)  # combo of file names
    one = server.get("/object_info/ImageInvert").json()
    assert one == {"ImageInvert": info["ImageInvert"]}
    assert server.get("/object_info/NoSuchNode").json() == {}


def test_system_stats_shape(server: LiveServer) -> None:
    stats = server.get("/system_stats").json()
    system = stats["system"]
    for key in ("os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version",
                "embedded_python", "argv"):
        assert key in system
    assert system["ram_total"] > 0
    assert stats["devices"], "at least one device"
    for device in stats["devices"]:
        assert {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
                "torch_vram_free"} <= set(device)
    import torch

    if not torch.cuda.is_available():
        assert stats["devices"][0]["type"] == "cpu"


def test_argv_hides_the_auth_token() -> None:
    argv = ["main.py", "--auth-token", "hunter2", "--port=1", "--auth-token=hunter2", "x=hunter2"]
    scrubbed = scrub_argv(argv, "hunter2")
    assert "hunter2" not in " ".join(scrubbed)
    assert scrubbed[:2] == ["main.py", "--auth-token"] and "--port=1" in scrubbed


def test_models_and_embeddings(server: LiveServer) -> None:
    models_root = server.settings.models_dirs[0]
    (models_root / "checkpoints" / "sd").mkdir(parents=True, exist_ok=True)
    (models_root / "checkpoints" / "sd" / "tiny.safetensors").write_bytes(b"x")
    (models_root / "checkpoints" / "notes.txt").write_text("not a model")
    (models_root / "embeddings").mkdir(parents=True, exist_ok=True)
    (models_root / "embeddings" / "easy.pt").write_bytes(b"x")
    folders = server.get("/models").json()
    assert {"checkpoints", "loras", "vae", "controlnet", "embeddings"} <= set(folders)
    assert server.get("/api/models/checkpoints").json() == ["sd/tiny.safetensors"]
    assert server.get("/models/loras").json() == []
    assert server.get("/embeddings").json() == ["easy"]
    assert server.get("/models/configs").status == 200
    missing = server.get("/models/not_a_folder")
    assert missing.status == 404
    assert_error_schema(missing.json(), "unknown_folder")


def test_features_and_extensions(server: LiveServer) -> None:
    assert server.get("/features").json() == {"supports_preview_metadata": True,
                                              "max_upload_size": server.settings.max_upload_bytes}
    assert server.get("/api/extensions").json() == []


def test_unknown_route_and_method_use_the_error_schema(server: LiveServer) -> None:
    missing = server.get("/no/such/route")
    assert missing.status == 404
    assert_error_schema(missing.json(), "not_found")
    wrong = server.request("DELETE", "/prompt")
    assert wrong.status == 405
    assert_error_schema(wrong.json(), "method_not_allowed")


def test_editor_not_installed_page(server: LiveServer) -> None:
    index = server.settings.frontend_dir / "index.html"
    index.unlink(missing_ok=True)
    reply = server.get("/")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert b"not installed" in reply.body


def test_editor_static_files(server: LiveServer, tmp_path: Path) -> None:
    root = server.settings.frontend_dir
    (root / "node_modules" / "lib").mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text("<!doctype html><title>editor</title>")
    (root / "main.js").write_text("export const x = 1;")
    (root / "node_modules" / "lib" / "graph.mjs").write_text("export {};")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    try:
        index = server.get("/")
        assert index.status == 200 and b"<title>editor</title>" in index.body
        script = server.get("/frontend/main.js")
        assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
        module = server.get("/frontend/node_modules/lib/graph.mjs")
        assert module.status == 200 and module.headers["Content-Type"].startswith("text/javascript")
        assert server.get("/frontend/missing.js").status == 404
        assert server.get("/frontend/%2e%2e/%2e%2e/secret.txt").status in (403, 404)
        (root / "link.txt").symlink_to(secret)
        assert server.get("/frontend/link.txt").status == 404
    finally:
        (root / "index.html").unlink()
        (root / "link.txt").unlink(missing_ok=True)


def _app_routes(server: LiveServer) -> set[tuple[str, str]]:
    routes = set()
    for route in server.runner.app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical if route.resource is not None else ""
        routes.add((route.method.lower(), canonical))
    return routes


def test_openapi_lists_every_route(server: LiveServer) -> None:
    doc = server.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    served = _app_routes(server)
    assert served == documented
    for prefix in PREFIXES:
        for path in ("/prompt", "/queue", "/history", "/history/{prompt_id}", "/view", "/upload/image",
                     "/upload/mask", "/object_info", "/object_info/{node_class}", "/interrupt", "/free",
                     "/system_stats", "/embeddings", "/models", "/models/{folder}", "/features",
                     "/extensions", "/ws", "/openapi.json"):
            assert prefix + path in doc["paths"], prefix + path
    assert set(doc["paths"]["/prompt"]) == {"get", "post"}
    assert {op.name for op in operations()} == {
        doc["paths"][op.path][op.method.lower()]["operationId"] for op in operations()}


def test_openapi_refs_resolve_and_errors_are_documented(server: LiveServer) -> None:
    doc = server.get("/openapi.json").json()
    text = server.get("/openapi.json").body.decode()
    for ref in set(re.findall(r'"\$ref":"([^"]+)"', text)):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    error = doc["components"]["schemas"]["ErrorResponse"]
    assert set(error["properties"]) == {"error", "node_errors"}
    post_prompt = doc["paths"]["/prompt"]["post"]
    assert post_prompt["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("PromptRequest")
    assert {"200", "400", "503"} <= set(post_prompt["responses"])
    upload = doc["paths"]["/upload/image"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload


def test_openapi_document_is_valid_openapi_31(server: LiveServer) -> None:
    validator = pytest.importorskip("openapi_spec_validator", reason="pip install openapi-spec-validator")
    validator.validate(server.get("/openapi.json").json())
