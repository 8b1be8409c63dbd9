"""Driving ComfyUI's official frontend (comfyui-frontend-package) in Debian's chromium against a live Loom server.

Every page is opened through :func:`open_app`, which records what the page asks of the network: answers from
Loom's loopback server, console errors, uncaught errors, and every request for another host. Requests for other
hosts (telemetry, model hosts, CDNs) are aborted, so that a test neither hangs on them nor reaches the internet.
"""

from __future__ import annotations

import importlib.util
import json
import re
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import LiveServer

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DEMO_CHECKPOINT = "tiny-shapes.safetensors"
BOOT_TIMEOUT_MS = 120_000
RUN_TIMEOUT_MS = 120_000

# Answers ComfyUI's own server gives on a fresh install too, and that the frontend reads as "nothing yet":
# a user folder not made yet (userdata listing 404 -> []), no node templates, no workflow index, no user.css.
EXPECTED_MISSING = (
    re.compile(r"/api/userdata\?dir=[^&]+&"),
    re.compile(r"/api/userdata/comfy\.templates\.json$"),
    re.compile(r"/api/userdata/workflows%2F\.index\.json$"),
    re.compile(r"/user\.css$"),
    re.compile(r"/api/userdata/user\.css$"),
)

#: Chromium's console message for a connection the page's Content-Security-Policy refused.
CSP_REFUSAL = re.compile(r"^(?:Connecting to '([^']+)' violates the following Content Security Policy directive"
                         r"|Fetch API cannot load (\S+?)\. Refused to connect because it violates the document's "
                         r"Content Security Policy)")
APP_READY = """() => !!(window.app && window.app.graph && window.app.canvas && window.app.vueAppReady
    && !document.getElementById('splash-loader'))"""
SAVED_IMAGE = """() => {
    const node = window.app.graph.nodes.find(n => n.type === 'SaveImage');
    const img = node && node.imgs && node.imgs[0];
    return !!(img && img.complete && img.naturalWidth > 0);
}"""


def require_browser() -> Any:
    """Playwright's sync API, or a skip that says what is missing."""
    if not CHROMIUM.is_file():
        pytest.skip("Debian chromium is missing at /usr/bin/chromium (apt-get install chromium)")
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        pytest.skip("ComfyUI's frontend is missing: pip install comfyui-frontend-package (make test installs it)")
    return pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install -e '.[test]'")


@dataclass
class Answer:
    status: int
    method: str
    url: str


@dataclass
class NetworkRecord:
    """What one page asked of the network while a test drove it."""
    origin: str
    answers: list[Answer] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    console_errors: list[tuple[str, str]] = field(default_factory=list)   # (text, the URL it is about)
    page_errors: list[str] = field(default_factory=list)

    def is_loopback(self, url: str) -> bool:
        return url == self.origin or url.startswith(self.origin + "/") or url.startswith(("data:", "blob:"))

    def loom_errors(self) -> list[Answer]:
        """Loom's 4xx/5xx answers, but for the ones ComfyUI gives too (:data:`EXPECTED_MISSING`)."""
        return [a for a in self.answers if a.status >= 400 and not expected_missing(a.url)]

    def refused_by_policy(self) -> list[str]:
        """The URLs the browser refused to connect to because Loom's Content-Security-Policy allows Loom only
        (engine/api/comfyui_frontend.py): requests that never left the page."""
        return [match[1] or match[2] for text, _ in self.console_errors if (match := CSP_REFUSAL.search(text))]

    def unexplained_console_errors(self) -> list[str]:
        """Console errors but for those about an expected 404, an aborted request for another host (the browser
        logs each failed load; the requests themselves are in :attr:`outside`) or one the policy refused."""
        return [text for text, url in self.console_errors
                if not (url in self.outside or expected_missing(url) or CSP_REFUSAL.search(text)
                        or any(expected_missing(quoted) for quoted in re.findall(r"'([^']+)'", text)))]

    def posts_to(self, path: str) -> list[str]:
        return [a.url for a in self.answers if a.method == "POST" and a.url.split("?")[0].endswith(path)]


def expected_missing(url: str) -> bool:
    return any(pattern.search(url) for pattern in EXPECTED_MISSING)


def watch_network(page: Any, record: NetworkRecord) -> None:
    def route(handled: Any) -> None:
        url = handled.request.url
        if record.is_loopback(url):
            handled.continue_()
        else:
            record.outside.append(url)
            handled.abort()

    page.route("**/*", route)
    page.on("response", lambda r: record.answers.append(Answer(r.status, r.request.method, r.url))
            if r.url.startswith(record.origin) else None)
    page.on("console", lambda m: record.console_errors.append((m.text, m.location.get("url", "")))
            if m.type == "error" else None)
    page.on("pageerror", lambda exc: record.page_errors.append(str(exc)))


def wait_until_ready(page: Any) -> None:
    """Past the splash screen: the app, its graph and canvas exist and the Vue app is mounted."""
    page.wait_for_function(APP_READY, timeout=BOOT_TIMEOUT_MS)


@contextmanager
def open_app(browser: Any, server: LiveServer) -> Iterator[tuple[Any, NetworkRecord]]:
    """ComfyUI's frontend from ``server`` in a fresh browser context at 1280x800, booted past its splash."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    record = NetworkRecord(server.url)
    watch_network(page, record)
    try:
        page.goto(server.url + "/")
        wait_until_ready(page)
        yield page, record
    finally:
        context.close()


class Shots:
    """Numbered screenshots in the test's tmp folder (kept by tests/frontend/conftest.py)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def take(self, page: Any, step: str) -> None:
        self.count += 1
        page.screenshot(path=str(self.folder / f"{self.count:02d}-{step}.png"))


def server_json(server: LiveServer, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=30) as response:
        return json.load(response)


def load_workflow(page: Any, path: Path) -> None:
    """Loads a saved workflow through the app's own API, as dropping the file would."""
    page.evaluate("graph => window.app.loadGraphData(graph)", json.loads(path.read_text()))
    page.wait_for_function("window.app.graph.nodes.some(n => n.type === 'SaveImage')")


def fit_view(page: Any) -> None:
    """Every node on screen: the canvas only loads a node's images while it draws the node."""
    page.get_by_role("button", name="Fit View").click()


def node_types(page: Any) -> list[str]:
    return page.evaluate("window.app.graph.nodes.map(n => n.type)")


def set_widgets(page: Any, node_type: str, values: dict[str, Any]) -> int:
    """Sets the named widgets on every node of ``node_type``; returns how many nodes it changed."""
    return page.evaluate("""([type, values]) => {
        const nodes = window.app.graph.nodes.filter(n => n.type === type);
        for (const node of nodes)
            for (const widget of node.widgets || [])
                if (widget.name in values) widget.value = values[widget.name];
        window.app.graph.setDirtyCanvas(true, true);
        return nodes.length;
    }""", [node_type, values])


def click_run(page: Any) -> None:
    page.get_by_test_id("queue-button").click()


def saved_image(page: Any) -> dict[str, Any]:
    """Waits for the SaveImage node's image; its src and natural size."""
    page.wait_for_function(SAVED_IMAGE, timeout=RUN_TIMEOUT_MS)
    return page.evaluate("""() => {
        const img = window.app.graph.nodes.find(n => n.type === 'SaveImage').imgs[0];
        return {src: img.src, width: img.naturalWidth, height: img.naturalHeight};
    }""")


def setting(page: Any, setting_id: str) -> Any:
    return page.evaluate("id => window.app.extensionManager.setting.get(id)", setting_id)
