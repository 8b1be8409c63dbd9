"""ComfyUI's official frontend (``python main.py --frontend comfyui``) against a live Loom server, in a real browser.

Run with ``pytest -m browser``; needs ``/usr/bin/chromium``, playwright and the comfyui-frontend-package. Each
step's screenshot goes to the test's tmp folder and is kept in test-output/screenshots/ (conftest.py). Every page
fails its test on an uncaught error; the boot test also fails on any request for a host other than Loom's.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.custom_nodes.compat import MODULES
from engine.custom_nodes.packs import load_packs
from engine.folders import Folders
from tests.api.conftest import LiveServer, start_live_server
from tests.frontend.comfyui_app import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEMO_CHECKPOINT,
    REPO,
    RUN_TIMEOUT_MS,
    NetworkRecord,
    Shots,
    click_run,
    fit_view,
    load_workflow,
    node_types,
    open_app,
    require_browser,
    saved_image,
    server_json,
    set_widgets,
    setting,
    wait_until_ready,
)

pytestmark = pytest.mark.browser

TXT2IMG = REPO / "workflows" / "txt2img.json"
RETURNING_USER = {"Comfy.TutorialCompleted": True}   # no first-run tour over the canvas


def start_comfyui_server(root: Path) -> LiveServer:
    return start_live_server(root, frontend="comfyui", models_dirs=(REPO / "models",))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = require_browser()
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_comfyui_server(tmp_path_factory.mktemp("loom-comfyui"))
    assert live.request("POST", "/api/settings", json_body=RETURNING_USER).status == 200
    yield live
    live.stop()


@pytest.fixture
def app(browser: Any, server: LiveServer) -> Iterator[tuple[Any, NetworkRecord]]:
    with open_app(browser, server) as (page, record):
        yield page, record
        assert record.page_errors == [], f"uncaught errors in the page: {record.page_errors}"


def test_app_boots_past_the_splash_and_asks_only_loom(browser: Any, tmp_path: Path) -> None:
    """A new user's first visit, then a returning user's: both boot, and only Loom's server is asked, without
    errors. Loom's default settings must keep the frontend off telemetry, update checks and model hosts."""
    live = start_comfyui_server(tmp_path / "root")
    shots = Shots(tmp_path)
    try:
        with open_app(browser, live) as (page, record):
            shots.take(page, "first-visit")
            page.reload()
            wait_until_ready(page)
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(2_000)   # the missing-model check runs after the graph loads
            shots.take(page, "returning-visit")
            assert page.locator("#graph-canvas").is_visible()
            assert page.evaluate("window.app.graph.nodes.length") > 0, "the default graph did not load"
    finally:
        live.stop()
    # The frontend asks the model host for each missing model's size on every graph load (no setting stops it):
    # Loom's Content-Security-Policy makes the browser refuse those before they leave the page.
    refused = record.refused_by_policy()
    assert refused and all(url.startswith("https://huggingface.co/") for url in refused), refused
    problems = {"uncaught errors": record.page_errors,
                "requests for other hosts": record.outside,
                "Loom's error answers": [f"{a.status} {a.method} {a.url}" for a in record.loom_errors()],
                "console errors": record.unexplained_console_errors()}
    found = {name: found for name, found in problems.items() if found}
    assert found == {}, f"the app's boot went beyond Loom or met errors: {found}"


def test_node_library_lists_looms_nodes(app: tuple[Any, NetworkRecord], server: LiveServer, tmp_path: Path) -> None:
    page, _ = app
    shots = Shots(tmp_path)
    loom_info = server_json(server, "/api/object_info")
    definitions = page.evaluate("""names => Object.fromEntries(names.map(name => {
        const def = window.LiteGraph.registered_node_types[name]?.nodeData;
        return [name, def ? {description: def.description, category: def.category,
                             checkpoints: def.input?.required?.ckpt_name?.[0] ?? null} : null];
    }))""", ["KSampler", "CheckpointLoaderSimple", "SaveImage"])
    assert definitions["KSampler"] == {"description": loom_info["KSampler"]["description"],
                                       "category": "sampling", "checkpoints": None}
    assert "heart of text-to-image" in definitions["KSampler"]["description"], "not Loom's own description"
    assert DEMO_CHECKPOINT in definitions["CheckpointLoaderSimple"]["checkpoints"]
    assert definitions["SaveImage"] is not None
    assert page.evaluate("Object.keys(window.LiteGraph.registered_node_types).length") >= len(loom_info)

    page.get_by_test_id("node-library-tab-button").click()
    search = page.get_by_placeholder("Search Nodes...")
    search.wait_for()
    shots.take(page, "node-library")
    search.fill("KSampler")
    page.get_by_text("KSampler", exact=True).first.wait_for(timeout=20_000)
    shots.take(page, "node-library-search")


def watch_job_count(page: Any) -> None:
    """Records each text the action bar's job counter ('1 active', '0 active') shows, in page.__jobCounts."""
    page.evaluate("""() => {
        const toggle = document.querySelector('[data-testid="queue-overlay-toggle"]');
        const counts = window.__jobCounts = [];
        const note = () => {
            const text = toggle.innerText.split('\\n')[0].trim();
            if (counts[counts.length - 1] !== text) counts.push(text);
        };
        note();
        new MutationObserver(note).observe(toggle, {subtree: true, childList: true, characterData: true});
    }""")


def test_txt2img_runs_from_the_run_button(app: tuple[Any, NetworkRecord], tmp_path: Path) -> None:
    page, record = app
    shots = Shots(tmp_path)
    load_workflow(page, TXT2IMG)
    fit_view(page)
    shots.take(page, "txt2img-loaded")
    watch_job_count(page)

    click_run(page)
    image = saved_image(page)
    assert image["width"] == 64 and image["height"] == 64
    query = urllib.parse.parse_qs(urllib.parse.urlparse(image["src"]).query)
    assert query["filename"][0].startswith("txt2img_") and query["type"] == ["output"]
    assert len(record.posts_to("/api/prompt")) == 1
    shots.take(page, "image-on-save-node")

    page.wait_for_function("window.__jobCounts[window.__jobCounts.length - 1] === '0 active'",
                           timeout=RUN_TIMEOUT_MS)
    counts = page.evaluate("window.__jobCounts")
    assert "1 active" in counts, f"the job never showed as running: {counts}"
    page.get_by_test_id("queue-overlay-toggle").click()
    overlay = page.get_by_test_id("queue-progress-overlay")
    overlay.get_by_text(query["filename"][0]).wait_for(timeout=20_000)
    shots.take(page, "job-queue-finished")
    jobs_errors = [a for a in record.loom_errors() if "/api/jobs" in a.url]
    assert jobs_errors == [], f"the job queue panel's /api/jobs failed: {jobs_errors}"


def graph_node_types(graph: dict[str, Any]) -> list[str]:
    return sorted(node["type"] for node in graph["nodes"])


def save_from_menu(page: Any, name: str) -> None:
    page.get_by_test_id("comfy-menu-button").click()
    page.get_by_role("menuitem", name="File").hover()
    page.get_by_role("menuitem", name="Save", exact=True).click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input").fill(name)
    dialog.get_by_role("button", name="Confirm").click()
    dialog.wait_for(state="detached")


def test_saved_workflow_survives_a_restart(browser: Any, tmp_path: Path) -> None:
    root, name = tmp_path / "root", "loom shapes"
    shots = Shots(tmp_path)
    first = start_comfyui_server(root)
    try:
        first.request("POST", "/api/settings", json_body=RETURNING_USER)
        with open_app(browser, first) as (page, record):
            load_workflow(page, TXT2IMG)
            save_from_menu(page, name)
            page.wait_for_function("name => window.app.extensionManager.workflow.activeWorkflow?.path === name",
                                   arg=f"workflows/{name}.json")
            shots.take(page, "saved")
            assert record.posts_to("/api/userdata/workflows%2Floom%20shapes.json")
        assert server_json(first, "/api/userdata?dir=workflows") == [f"{name}.json"]
    finally:
        first.stop()
    stored = json.loads((root / "user" / "default" / "workflows" / f"{name}.json").read_text())
    assert graph_node_types(stored) == graph_node_types(json.loads(TXT2IMG.read_text()))

    second = start_comfyui_server(root)
    try:
        with open_app(browser, second) as (page, _):
            page.get_by_test_id("workflows-tab-button").click()
            entry = page.get_by_text(name, exact=True).first
            entry.wait_for(timeout=20_000)
            shots.take(page, "workflows-sidebar-after-restart")
            entry.click()
            page.wait_for_function("name => window.app.extensionManager.workflow.activeWorkflow?.path === name",
                                   arg=f"workflows/{name}.json", timeout=20_000)
            assert sorted(node_types(page)) == graph_node_types(stored)
            shots.take(page, "reopened")
    finally:
        second.stop()


def open_setting(page: Any, search: str, setting_id: str) -> Any:
    page.get_by_role("button", name="Settings (Ctrl + ,)").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_placeholder("Search").first.fill(search)
    switch = dialog.locator(f'[data-setting-id="{setting_id}"] [role="switch"]')
    switch.wait_for(timeout=20_000)
    return switch


def test_setting_changed_in_the_dialog_persists(app: tuple[Any, NetworkRecord], server: LiveServer,
                                                tmp_path: Path) -> None:
    page, _ = app
    shots = Shots(tmp_path)
    setting_id = "Comfy.Graph.CanvasInfo"   # "Show canvas info on bottom left corner (fps, etc.)", on by default
    assert setting(page, setting_id) is not False
    switch = open_setting(page, "canvas info", setting_id)
    assert switch.get_attribute("aria-checked") == "true"
    shots.take(page, "setting-on")
    with page.expect_response(lambda r: r.request.method == "POST"
                              and r.url.endswith(f"/api/settings/{setting_id}")) as saved:
        switch.click()
    assert saved.value.status == 200 and saved.value.request.post_data_json is False
    assert setting(page, setting_id) is False
    shots.take(page, "setting-off")
    assert server_json(server, "/api/settings")[setting_id] is False

    page.reload()
    wait_until_ready(page)
    assert setting(page, setting_id) is False
    switch = open_setting(page, "canvas info", setting_id)
    assert switch.get_attribute("aria-checked") == "false"
    shots.take(page, "after-reload")
    server.request("POST", f"/api/settings/{setting_id}", json_body=True)   # as it was, for the other tests


def test_image_uploads_to_load_image(app: tuple[Any, NetworkRecord], server: LiveServer, tmp_path: Path) -> None:
    page, record = app
    shots = Shots(tmp_path)
    picture = tmp_path / "upload" / "red-square.png"   # not beside the screenshots, which are kept
    picture.parent.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(picture)
    page.evaluate("""() => {
        const node = window.LiteGraph.createNode('LoadImage');
        node.pos = [100, 100];
        window.app.graph.add(node);
    }""")
    fit_view(page)
    with page.expect_file_chooser() as chooser:
        page.evaluate("""() => window.app.graph.nodes.find(n => n.type === 'LoadImage')
            .widgets.find(w => w.name === 'upload').callback()""")
    chooser.value.set_files(str(picture))
    page.wait_for_function("""() => {
        const node = window.app.graph.nodes.find(n => n.type === 'LoadImage');
        return node.widgets[0].value === 'red-square.png' && node.imgs?.[0]?.naturalWidth === 32;
    }""", timeout=30_000)
    shots.take(page, "uploaded")
    assert record.posts_to("/api/upload/image")
    uploaded = server.settings.input_dir / "red-square.png"
    assert uploaded.is_file() and uploaded.read_bytes() == picture.read_bytes()


def test_sdxl_template_opens_and_runs_on_the_demo_model(app: tuple[Any, NetworkRecord], tmp_path: Path) -> None:
    page, record = app
    shots = Shots(tmp_path)
    page.get_by_role("button", name="Templates").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_placeholder("Search").first.fill("SDXL1.0")
    card = page.get_by_test_id("template-workflow-image_sdxl_simple")
    card.wait_for(timeout=30_000)
    shots.take(page, "template-browser")
    card.click()
    page.wait_for_function("""() => window.app.graph.nodes.some(n => n.type === 'CheckpointLoaderSimple'
        && n.widgets[0].value === 'sd_xl_base_1.0.safetensors')""", timeout=30_000)
    shots.take(page, "template-opened")

    assert set_widgets(page, "CheckpointLoaderSimple", {"ckpt_name": DEMO_CHECKPOINT}) == 1
    assert set_widgets(page, "EmptyLatentImage", {"width": 64, "height": 64}) == 1
    assert set_widgets(page, "KSampler", {"steps": 4}) == 1
    fit_view(page)
    click_run(page)
    image = saved_image(page)
    assert (image["width"], image["height"]) == (64, 64)
    assert len(record.posts_to("/api/prompt")) == 1
    shots.take(page, "template-image")


def test_subgraph_made_in_the_frontend_runs(app: tuple[Any, NetworkRecord], tmp_path: Path) -> None:
    page, record = app
    shots = Shots(tmp_path)
    load_workflow(page, TXT2IMG)
    fit_view(page)
    page.evaluate("""() => {
        const canvas = window.app.canvas;
        canvas.deselectAll();
        for (const node of window.app.graph.nodes.filter(n => n.type === 'CLIPTextEncode')) canvas.select(node);
    }""")
    page.evaluate("window.app.extensionManager.command.execute('Comfy.Graph.ConvertToSubgraph')")
    page.wait_for_function("window.app.graph.nodes.some(n => n.isSubgraphNode?.())")
    assert "CLIPTextEncode" not in node_types(page)
    shots.take(page, "subgraph-made")

    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/prompt")) as sent:
        click_run(page)
    prompt = json.loads(sent.value.post_data)["prompt"]
    nested = sorted(node_id for node_id, node in prompt.items() if node["class_type"] == "CLIPTextEncode")
    assert len(nested) == 2 and all(":" in node_id for node_id in nested), nested
    image = saved_image(page)
    assert image["width"] == 64
    assert record.posts_to("/api/prompt")
    shots.take(page, "subgraph-image")


PACK_NODE = '''
class Echo:
    CATEGORY = "loom browser test"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "echo"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}

    def echo(self, text):
        return (text,)


NODE_CLASS_MAPPINGS = {"LoomBrowserEcho": Echo}
WEB_DIRECTORY = "./web"
'''
PACK_SCRIPT = """import { app } from "../../scripts/app.js";
import "../../extensions/core/groupNode.js";
app.registerExtension({ name: "loom.test.browserpack", async setup() { window.__loomPackSetup = true; } });
"""


def test_a_custom_node_packs_frontend_extension_runs(browser: Any, tmp_path: Path) -> None:
    name = f"loom_browser_pack_{uuid.uuid4().hex[:8]}"
    pack = tmp_path / "custom_nodes" / name
    (pack / "web").mkdir(parents=True)
    (pack / "__init__.py").write_text(PACK_NODE)
    (pack / "web" / "echo.js").write_text(PACK_SCRIPT)
    root = tmp_path / "root"
    folders = Folders(root / "input", root / "output", root / "temp", (REPO / "models",))
    saved = {module: sys.modules.get(module) for module in MODULES}
    live = start_live_server(root, frontend="comfyui", models_dirs=(REPO / "models",),
                             extra_nodes=lambda registry: load_packs([tmp_path / "custom_nodes"], registry, folders))
    try:
        live.request("POST", "/api/settings", json_body=RETURNING_USER)
        with open_app(browser, live) as (page, record):
            page.wait_for_function("window.__loomPackSetup === true", timeout=30_000)
            assert page.evaluate("!!window.LiteGraph.registered_node_types['LoomBrowserEcho']")
            assert any(a.url.endswith(f"/extensions/{name}/echo.js") and a.status == 200 for a in record.answers)
            Shots(tmp_path).take(page, "pack-extension-loaded")
    finally:
        live.stop()
        for module_name, module in saved.items():
            if module is None:
                sys.modules.pop(module_name, None)
            else:
                sys.modules[module_name] = module
    assert record.page_errors == [] and record.loom_errors() == []
