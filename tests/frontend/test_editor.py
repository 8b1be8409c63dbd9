"""The browser graph editor against a real Loom server on loopback, driven in Debian's chromium.

Run with ``pytest -m browser``; needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the
frontend's npm packages (``npm ci --prefix frontend``). Screenshots of each step go to the test's tmp folder
and are kept in test-output/screenshots/ (tests/frontend/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import LiveServer, start_live_server

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
LITEGRAPH = REPO / "frontend" / "node_modules" / "@comfyorg" / "litegraph" / "dist" / "litegraph.es.js"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if not LITEGRAPH.is_file():
        pytest.skip("frontend packages missing: run `npm ci --prefix frontend`")
    server = start_live_server(tmp_path_factory.mktemp("loom-editor"), frontend_dir=REPO / "frontend",
                               models_dirs=(REPO / "models",))
    yield server
    server.stop()


@contextmanager
def open_editor(url: str) -> Iterator[Any]:
    """The editor at ``url`` in Debian's chromium at 1280x800, loaded; fails on any uncaught page error."""
    if not CHROMIUM.is_file():
        pytest.skip("Debian chromium is missing at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install -e '.[test]'")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        page.wait_for_function("window.loom && window.loom.ready", timeout=15_000)
        yield page
        browser.close()
        assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture
def page(live: LiveServer) -> Iterator[Any]:
    with open_editor(live.url) as opened:
        yield opened


def nodes_by_type(page: Any) -> dict[str, list[dict[str, Any]]]:
    return page.evaluate("""() => {
        const out = {};
        for (const n of window.loom.graph._nodes) {
            const widgets = Object.fromEntries((n.widgets || []).map(w => [w.name, w.value]));
            (out[n.type] ||= []).push({id: n.id, widgets});
        }
        return out;
    }""")


def test_default_graph_queues_and_shows_the_image(page: Any, tmp_path: Path) -> None:
    nodes = nodes_by_type(page)
    assert sorted(nodes) == ["CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler",
                             "SaveImage", "VAEDecode"]
    assert nodes["CheckpointLoaderSimple"][0]["widgets"]["ckpt_name"] == "tiny-shapes.safetensors"
    sampler = nodes["KSampler"][0]["widgets"]
    assert sampler["control_after_generate"] == "fixed" and sampler["seed"] == 42
    too_small = page.evaluate("""() => window.loom.graph._nodes
        .filter(n => n.size[1] < n.computeSize()[1]).map(n => n.type)""")
    assert too_small == []
    page.screenshot(path=str(tmp_path / "1-default-graph.png"))

    page.click("#queue-button")
    page.wait_for_function("Object.keys(window.loom.outputs).length > 0", timeout=60_000)
    outputs = page.evaluate("window.loom.outputs")
    save_id = str(nodes["SaveImage"][0]["id"])
    assert list(outputs) == [save_id] and outputs[save_id][0].startswith("/view?filename=txt2img_")
    page.wait_for_function(f"window.loom.state.images.get('{save_id}')[0].naturalWidth > 0")
    assert page.evaluate(f"window.loom.state.images.get('{save_id}')[0].naturalWidth") == 64
    page.wait_for_function("window.loom.status === 'done'")
    page.screenshot(path=str(tmp_path / "2-after-queue.png"))


def test_mismatched_link_is_refused_and_matching_one_made(page: Any, tmp_path: Path) -> None:
    made = page.evaluate("""() => {
        const g = window.loom.graph;
        const latent = g.findNodesByType("EmptyLatentImage")[0];
        const sampler = g.findNodesByType("KSampler")[0];
        const before = Object.keys(g.links).length ?? g.links.size;
        const bad = latent.connect(0, sampler, 0);          // LATENT -> model (MODEL)
        const modelLink = sampler.inputs[0].link;
        const good = latent.connect(0, sampler, sampler.findInputSlot("latent_image"));
        return {bad: bad ?? null, modelLinkOrigin: g.links[modelLink]?.type ?? g.links.get?.(modelLink)?.type,
                good: good ? good.type : null};
    }""")
    assert made == {"bad": None, "modelLinkOrigin": "MODEL", "good": "LATENT"}
    page.screenshot(path=str(tmp_path / "3-links.png"))


def test_validation_errors_are_shown_on_the_node(page: Any, tmp_path: Path) -> None:
    page.evaluate("""() => {
        const ck = window.loom.graph.findNodesByType("CheckpointLoaderSimple")[0];
        ck.widgets[0].value = "missing.safetensors";
    }""")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("window.loom.state.errors.size > 0")
    errors = page.evaluate("Object.fromEntries(window.loom.state.errors)")
    ck_id = str(nodes_by_type(page)["CheckpointLoaderSimple"][0]["id"])
    assert list(errors) == [ck_id] and "missing.safetensors" in errors[ck_id]
    assert page.evaluate("window.loom.status").startswith("not queued")
    page.screenshot(path=str(tmp_path / "4-node-error.png"))


def test_prompts_running_at_once_light_their_own_nodes(page: Any, tmp_path: Path) -> None:
    """A cluster front runs several prompts at once; their websocket messages interleave. The messages are
    fed to the editor's Api object, which is where the websocket delivers them."""
    nodes = nodes_by_type(page)
    sampler, decode = str(nodes["KSampler"][0]["id"]), str(nodes["VAEDecode"][0]["id"])
    send = """([type, data]) => window.loom.api.dispatchEvent(new CustomEvent(type, {detail: data}))"""
    for message in (("execution_start", {"prompt_id": "p1"}), ("executing", {"node": sampler, "prompt_id": "p1"}),
                    ("execution_start", {"prompt_id": "p2"}), ("executing", {"node": decode, "prompt_id": "p2"}),
                    ("progress", {"value": 5, "max": 10, "node": sampler, "prompt_id": "p1"}),
                    ("progress", {"value": 1, "max": 4, "node": decode, "prompt_id": "p2"})):
        page.evaluate(send, list(message))
    runs = page.evaluate("Object.fromEntries(window.loom.state.runs)")
    assert runs == {"p1": {"node": sampler, "progress": 0.5}, "p2": {"node": decode, "progress": 0.25}}
    assert page.evaluate("window.loom.status") == "running VAEDecode (and 1 more prompt)"
    page.screenshot(path=str(tmp_path / "5-two-prompts-running.png"))

    page.evaluate(send, ["executing", {"node": None, "prompt_id": "p2"}])
    assert page.evaluate("Object.keys(Object.fromEntries(window.loom.state.runs))") == ["p1"]
    assert page.evaluate("window.loom.status") == "running KSampler"
    page.evaluate(send, ["executing", {"node": None, "prompt_id": "p1"}])
    assert page.evaluate("window.loom.state.runs.size") == 0
    assert page.evaluate("window.loom.status") == "done"
