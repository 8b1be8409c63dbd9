"""Undo/redo, the prompt textarea, end-of-run status lines and websocket reconnection, in a real browser.

Same setup as test_editor.py (``pytest -m browser``); screenshots of each step go to the test's tmp folder.
The module has its own server so that the last test can stop it and start a new one on the same port.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import LiveServer, start_live_server
from tests.frontend.test_editor import LITEGRAPH, REPO, page  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

_servers: list[LiveServer] = []


def _start(root: Path, port: int = 0) -> LiveServer:
    server = start_live_server(root, port=port, frontend_dir=REPO / "frontend", models_dirs=(REPO / "models",))
    _servers.append(server)
    return server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if not LITEGRAPH.is_file():
        pytest.skip("frontend packages missing: run `npm ci --prefix frontend`")
    root = tmp_path_factory.mktemp("loom-history")
    server = _start(root)
    server.root = root  # type: ignore[attr-defined]
    yield server
    _servers[-1].stop()
    _servers.clear()


def node_ids(page: Any) -> list[int]:  # noqa: F811
    return sorted(page.evaluate("window.loom.graph._nodes.map(n => n.id)"))


def test_delete_undo_redo(page: Any, tmp_path: Path) -> None:  # noqa: F811
    before = node_ids(page)
    view = page.evaluate("[...window.loom.canvas.ds.offset, window.loom.canvas.ds.scale]")
    save_id = page.evaluate("window.loom.graph.findNodesByType('SaveImage')[0].id")
    page.evaluate(f"""() => {{
        const c = window.loom.canvas;
        c.deselectAll();
        c.select(window.loom.graph.getNodeById({save_id}));
    }}""")
    page.focus("#graph-canvas")
    page.keyboard.press("Delete")
    page.wait_for_function(f"!window.loom.graph.getNodeById({save_id})")
    after_delete = node_ids(page)
    assert after_delete == [i for i in before if i != save_id]
    page.screenshot(path=str(tmp_path / "1-deleted.png"))

    page.keyboard.press("Control+z")
    page.wait_for_function(f"!!window.loom.graph.getNodeById({save_id})")
    assert node_ids(page) == before
    links = page.evaluate(f"window.loom.graph.getNodeById({save_id}).inputs[0].link")
    assert links is not None
    assert page.evaluate("[...window.loom.canvas.ds.offset, window.loom.canvas.ds.scale]") == view
    page.screenshot(path=str(tmp_path / "2-undone.png"))

    page.keyboard.press("Control+Shift+z")
    page.wait_for_function(f"!window.loom.graph.getNodeById({save_id})")
    assert node_ids(page) == after_delete
    page.keyboard.press("Control+z")
    page.wait_for_function(f"!!window.loom.graph.getNodeById({save_id})")
    page.keyboard.press("Control+y")
    page.wait_for_function(f"!window.loom.graph.getNodeById({save_id})")
    page.screenshot(path=str(tmp_path / "3-redone.png"))

    page.click("#help-button")
    assert "Ctrl+Z" in page.locator("#help-overlay").inner_text()
    page.keyboard.press("Escape")


def test_prompt_is_edited_in_a_textarea_and_queued(page: Any, live: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    found = page.evaluate("""() => {
        const c = window.loom.canvas, g = window.loom.graph;
        const node = g.findNodesByType("CLIPTextEncode")[0];
        const widget = node.widgets.find(w => w.name === "text");
        const rect = c.canvas.getBoundingClientRect();
        const [x, y] = c.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2,
                                                   node.pos[1] + widget.last_y + 10]);
        return {id: node.id, x: rect.left + x, y: rect.top + y, value: widget.value};
    }""")
    page.mouse.click(found["x"], found["y"])
    editor = page.locator("textarea.loom-text-editor")
    editor.wait_for(timeout=5_000)
    assert editor.input_value() == found["value"]
    box = editor.bounding_box()
    assert box and box["height"] >= 100 and box["width"] >= 200
    page.screenshot(path=str(tmp_path / "1-textarea.png"))

    # Esc cancels.
    editor.fill("thrown away")
    page.keyboard.press("Escape")
    assert editor.count() == 0
    value = f"window.loom.graph.getNodeById({found['id']}).widgets.find(w => w.name === 'text').value"
    assert page.evaluate(value) == found["value"]

    # Ctrl+Enter commits; the newline survives; it does not queue.
    page.mouse.click(found["x"], found["y"])
    editor.wait_for(timeout=5_000)
    editor.fill("a red square\non a blue field")
    page.keyboard.press("Control+Enter")
    assert editor.count() == 0
    assert page.evaluate(value) == "a red square\non a blue field"
    assert page.evaluate("window.loom.queued.length") == 0

    # Ctrl+Z undoes the edit, Ctrl+Y brings it back.
    page.focus("#graph-canvas")
    page.keyboard.press("Control+z")
    page.wait_for_function(f"{value} === {found['value']!r}")
    page.keyboard.press("Control+y")
    page.wait_for_function(f"{value} === 'a red square\\non a blue field'")

    page.click("#queue-button")
    page.wait_for_function("window.loom.queued.length === 1", timeout=10_000)
    prompt_id = page.evaluate("window.loom.queued[0]")
    entry = live.wait_history(prompt_id, timeout=60)
    prompt = entry["prompt"][2]
    assert prompt[str(found["id"])]["inputs"]["text"] == "a red square\non a blue field"
    page.wait_for_function("window.loom.status === 'done'", timeout=60_000)
    page.screenshot(path=str(tmp_path / "2-queued.png"))


def test_status_after_interrupt_and_error(page: Any) -> None:  # noqa: F811
    statuses = page.evaluate("""() => {
        const api = window.loom.api, out = [];
        const send = (type, detail) => api.dispatchEvent(new CustomEvent(type, {detail}));
        send("execution_start", {prompt_id: "p1"});
        send("executing", {node: null, prompt_id: "p1"});
        out.push(window.loom.status);
        send("execution_start", {prompt_id: "p2"});
        send("execution_interrupted", {prompt_id: "p2", node_id: "3"});
        send("executing", {node: null, prompt_id: "p2"});
        out.push(window.loom.status);
        send("execution_start", {prompt_id: "p3"});
        send("execution_error", {prompt_id: "p3", node_id: "3", node_type: "KSampler",
                                 exception_type: "ValueError", exception_message: "boom"});
        send("executing", {node: null, prompt_id: "p3"});
        out.push(window.loom.status);
        window.loom.state.errors.clear();
        return out;
    }""")
    assert statuses[0] == "done"
    assert statuses[1] == "interrupted"
    assert statuses[2].startswith("failed") and "boom" in statuses[2]


STUB_GRAPH = """async (middle) => {
    const { LiteGraph } = await import("litegraph");
    const g = window.loom.graph;
    g.clear();
    const make = (type, x) => { const n = LiteGraph.createNode(type); n.pos = [x, 80]; g.add(n); return n; };
    const first = make("StubInt", 40), mid = make(middle, 320), show = make("StubShow", 600);
    first.connect(0, mid, 0);
    mid.connect(0, show, 0);
}"""


def test_real_interrupt_and_failure_leave_their_status(page: Any, live: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    page.evaluate(STUB_GRAPH, "StubGate")
    page.click("#queue-button")
    assert _servers[-1].controls.entered.wait(10)
    reply = _servers[-1].post("/interrupt", {})
    assert reply.status == 200
    page.wait_for_timeout(1500)
    assert page.evaluate("window.loom.status") == "interrupted"
    page.wait_for_timeout(500)
    assert page.evaluate("window.loom.status") == "interrupted"
    page.screenshot(path=str(tmp_path / "1-interrupted.png"))

    page.evaluate(STUB_GRAPH, "StubFail")
    page.click("#queue-button")
    page.wait_for_timeout(1500)
    assert page.evaluate("window.loom.status").startswith("failed")
    assert "stub failure" in page.evaluate("window.loom.status")
    page.screenshot(path=str(tmp_path / "2-failed.png"))
    page.click("#default-button")
    page.wait_for_function("window.loom.graph.findNodesByType('KSampler').length === 1")


def test_websocket_reconnects_after_server_restart(page: Any, live: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    page.wait_for_function("window.loom.status !== 'disconnected from the server, reconnecting…'")
    current = _servers[-1]
    port, root = current.port, live.root  # type: ignore[attr-defined]
    current.stop()
    page.wait_for_function("window.loom.status.startsWith('disconnected')", timeout=10_000)
    page.screenshot(path=str(tmp_path / "1-disconnected.png"))

    _start(root, port=port)
    # The server greets a new socket with its queue status, which replaces "connected" on the toolbar.
    page.wait_for_function("""() => window.loom.api.socket.readyState === WebSocket.OPEN
        && !window.loom.status.startsWith('disconnected')""", timeout=15_000)
    assert page.evaluate("window.loom.status") in ("connected", "queue: 0")
    page.click("#queue-button")
    page.wait_for_function("window.loom.queued.length === 1", timeout=10_000)
    page.wait_for_function("window.loom.status === 'done'", timeout=60_000)
    page.screenshot(path=str(tmp_path / "2-reconnected-and-queued.png"))
