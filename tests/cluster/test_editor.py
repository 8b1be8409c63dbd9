"""The graph editor in chromium against a cluster front: prompts run at once on two workers and show so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import LiveServer, start_live_server
from tests.cluster.conftest import REPO
from tests.cluster.local_ray import wait_for_free_cpus
from tests.cluster.test_server import _cluster_runner_factory
from tests.frontend.conftest import keep_screenshots  # noqa: F401 - autouse: screenshots to test-output/
from tests.frontend.test_editor import LITEGRAPH, open_editor

pytestmark = pytest.mark.browser


@pytest.fixture
def front(ray_cluster: Any, tmp_path: Path) -> Iterator[LiveServer]:
    if not LITEGRAPH.is_file():
        pytest.skip("frontend packages missing: run `npm ci --prefix frontend`")
    server = start_live_server(tmp_path / "front", make_runner=_cluster_runner_factory(tmp_path),
                               frontend_dir=REPO / "frontend",
                               models_dirs=(REPO / "models",))
    yield server
    server.stop()
    wait_for_free_cpus()


@pytest.fixture
def page(front: LiveServer) -> Iterator[Any]:
    with open_editor(front.url) as opened:
        yield opened


def test_a_batch_of_two_runs_on_two_workers_side_by_side(page: Any, tmp_path: Path) -> None:
    page.evaluate("""() => { const k = window.loom.graph.findNodesByType("KSampler")[0];
        k.widgets.find(w => w.name === "steps").value = 400; }""")
    page.fill("#batch-count", "2")
    page.click("#queue-panel-button")
    page.click("#queue-button")
    page.wait_for_function("""window.loom.state.runs.size === 2
        && [...window.loom.state.runs.values()].every(r => r.progress > 0.05)""", timeout=60_000)
    page.wait_for_function("document.querySelectorAll('#queue-panel .running .qp-where').length === 2",
                           timeout=10_000)
    where = page.eval_on_selector_all("#queue-panel .running .qp-where", "els => els.map(e => e.textContent)")
    assert sorted(text.split(" · ")[0] for text in where) == ["on w1", "on w2"]
    assert "(and 1 more prompt)" in page.evaluate("window.loom.status")
    page.screenshot(path=str(tmp_path / "1-two-workers.png"))
    page.wait_for_function("window.loom.status === 'done' && window.loom.state.runs.size === 0", timeout=90_000)
    page.wait_for_function("document.querySelectorAll('#queue-panel .qp-history .done').length === 2",
                           timeout=10_000)
    assert page.evaluate("document.querySelectorAll('#queue-panel .running').length") == 0
    page.screenshot(path=str(tmp_path / "2-both-done.png"))
