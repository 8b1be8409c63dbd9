"""The queue/history side panel and the help overlay, in a real browser against a live Loom server.

Same setup as test_editor.py (``pytest -m browser``); screenshots of each step go to the test's tmp folder.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.frontend.test_editor import live, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


def server_history(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/history", timeout=10) as response:
        return json.load(response)


def test_history_entry_shows_thumbnail_and_can_be_deleted(page: Any, live: Any, tmp_path: Path) -> None:  # noqa: F811
    page.click("#queue-button")
    page.wait_for_function("window.loom.queued.length === 1", timeout=10_000)
    prompt_id = page.evaluate("window.loom.queued[0]")
    page.wait_for_function("window.loom.status === 'done'", timeout=60_000)

    page.click("#queue-panel-button")
    entry = page.locator(f'#queue-panel .qp-history li[data-prompt-id="{prompt_id}"]')
    entry.wait_for(timeout=10_000)
    assert entry.locator(".qp-state").inner_text() == "done"
    thumb = entry.locator("img.qp-thumb")
    assert thumb.count() == 1
    page.wait_for_function("""() => {
        const img = document.querySelector('#queue-panel img.qp-thumb');
        return img && img.complete && img.naturalWidth === 64;
    }""")
    assert thumb.get_attribute("src").startswith("/view?filename=txt2img_")
    assert page.locator("#queue-panel .qp-queue .qp-empty").inner_text() == "Nothing queued."
    panel = page.locator("#queue-panel").bounding_box()
    assert panel and panel["x"] + panel["width"] <= 1280 and 250 <= panel["width"] <= 320
    canvas_width = page.evaluate("document.getElementById('graph-canvas').width")
    assert canvas_width <= 1280 - 250
    page.screenshot(path=str(tmp_path / "1-panel-with-history.png"))

    thumb.click()
    page.locator("#lightbox img").wait_for()
    page.screenshot(path=str(tmp_path / "2-lightbox.png"))
    page.keyboard.press("Escape")
    assert page.locator("#lightbox").count() == 0

    assert prompt_id in server_history(live.url)
    entry.get_by_role("button", name="Delete").click()
    entry.wait_for(state="detached", timeout=10_000)
    assert prompt_id not in server_history(live.url)
    page.screenshot(path=str(tmp_path / "3-entry-deleted.png"))

    page.click("#queue-panel-button")
    assert page.locator("#queue-panel").is_hidden()
    # The canvas gets the room back (up to the window's right edge; the node palette may be open on the left).
    assert page.evaluate("document.querySelector('main').getBoundingClientRect().right") == 1280
    assert page.evaluate("document.getElementById('graph-canvas').width") == page.evaluate(
        "document.querySelector('main').clientWidth")


def test_pending_prompt_is_cancelled_and_running_one_stopped(page: Any, live: Any, tmp_path: Path) -> None:  # noqa: F811
    page.evaluate("""() => {
        const sampler = window.loom.graph.findNodesByType("KSampler")[0];
        sampler.widgets.find(w => w.name === "steps").value = 5000;
    }""")
    page.click("#queue-panel-button")
    page.fill("#batch-count", "2")
    page.click("#queue-button")
    page.wait_for_function("window.loom.queued.length === 2", timeout=10_000)
    first, second = page.evaluate("window.loom.queued")
    running = page.locator(f'#queue-panel .qp-queue li.running[data-prompt-id="{first}"]')
    pending = page.locator(f'#queue-panel .qp-queue li.pending[data-prompt-id="{second}"]')
    running.wait_for(timeout=30_000)
    pending.wait_for(timeout=10_000)
    page.wait_for_function("parseFloat(document.querySelector('.qp-progress-bar').style.width) > 0",
                           timeout=30_000)
    page.screenshot(path=str(tmp_path / "4-running-and-pending.png"))
    pending.get_by_role("button", name="Cancel").click()
    pending.wait_for(state="detached", timeout=10_000)
    running.get_by_role("button", name="Stop").click()
    running.wait_for(state="detached", timeout=30_000)
    stopped = page.locator(f'#queue-panel .qp-history li[data-prompt-id="{first}"] .qp-state')
    stopped.wait_for(timeout=10_000)
    assert stopped.inner_text() == "interrupted"
    history = server_history(live.url)
    assert first in history and second not in history
    page.screenshot(path=str(tmp_path / "5-after-cancel-and-stop.png"))


def test_help_overlay_opens_with_question_mark_and_closes_with_escape(page: Any, tmp_path: Path) -> None:  # noqa: F811
    page.click("#graph-canvas", position={"x": 640, "y": 700})
    page.keyboard.press("?")
    overlay = page.locator("#help-overlay")
    overlay.wait_for(timeout=5_000)
    text = overlay.inner_text()
    for shortcut in ("Ctrl+Enter", "Ctrl+S", "Ctrl+O", "Double-click canvas", "Ctrl+C / Ctrl+V", "Wheel"):
        assert shortcut in text
    page.screenshot(path=str(tmp_path / "6-help.png"))
    page.keyboard.press("Escape")
    assert overlay.count() == 0
    page.click("#help-button")
    overlay.wait_for(timeout=5_000)
    page.keyboard.press("Escape")
    assert overlay.count() == 0
