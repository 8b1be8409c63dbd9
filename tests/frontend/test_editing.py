"""Editing in the browser editor: seed control after Queue, copy/paste, groups, Save -> Load.

Same setup as test_editor.py (``pytest -m browser``); screenshots of each step go to the test's tmp folder.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import LiveServer
from tests.frontend.test_editor import live, nodes_by_type, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

SET_SEED_CONTROL = """(control) => {
    const sampler = window.loom.graph.findNodesByType("KSampler")[0];
    sampler.widgets.find(w => w.name === "control_after_generate").value = control;
    return sampler.widgets.find(w => w.name === "seed").value;
}"""
SEED = """() => window.loom.graph.findNodesByType("KSampler")[0].widgets.find(w => w.name === "seed").value"""

# Screen point of a node's title bar, for mouse clicks.
TITLE_POINT = """(id) => {
    const { canvas, graph } = window.loom;
    const node = graph.getNodeById(id);
    const rect = canvas.canvas.getBoundingClientRect();
    const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0] + 40, node.pos[1] - 15]);
    return [rect.left + x, rect.top + y];
}"""

VIEW = "({offset: [...window.loom.canvas.ds.offset], scale: window.loom.canvas.ds.scale})"
SERIALIZED = """() => {
    const data = window.loom.graph.serialize();
    return {nodes: data.nodes.map(n => ({id: n.id, type: n.type, pos: n.pos, inputs: n.inputs, outputs: n.outputs,
                                         widgets_values: n.widgets_values})),
            links: data.links, groups: data.groups};
}"""


def queued_seed(url: str, prompt_id: str) -> int:
    """The KSampler seed of a queued prompt, from the server's /history (waits for the prompt to finish)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=10) as response:
            entry = json.load(response).get(prompt_id)
        if entry:
            prompt = entry["prompt"][2]
            [sampler] = [node for node in prompt.values() if node["class_type"] == "KSampler"]
            return sampler["inputs"]["seed"]
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} not in the history after 60 s")


@pytest.mark.parametrize("control", ["increment", "randomize", "fixed"])
def test_seed_control_applies_after_queueing(page: Any, live: LiveServer, tmp_path: Path, control: str) -> None:  # noqa: F811
    before = page.evaluate(SET_SEED_CONTROL, control)
    assert before == 42
    page.click("#queue-button")
    page.wait_for_function("window.loom.queued.length === 1", timeout=10_000)
    after = page.evaluate(SEED)
    if control == "increment":
        assert after == before + 1
    elif control == "randomize":
        assert after != before and isinstance(after, int) and 0 <= after < 2**64
    else:
        assert after == before
    assert queued_seed(live.url, page.evaluate("window.loom.queued[0]")) == before
    page.wait_for_function("window.loom.status === 'done'", timeout=60_000)
    page.screenshot(path=str(tmp_path / f"seed-{control}.png"))

    # A second Queue uses the seed now shown, and applies the control once more.
    page.click("#queue-button")
    page.wait_for_function("window.loom.queued.length === 2", timeout=10_000)
    assert queued_seed(live.url, page.evaluate("window.loom.queued[1]")) == after
    if control == "increment":
        assert page.evaluate(SEED) == after + 1


def test_copy_paste_makes_a_node_with_the_same_widget_values(page: Any, tmp_path: Path) -> None:  # noqa: F811
    latent = nodes_by_type(page)["EmptyLatentImage"][0]
    count = page.evaluate("window.loom.graph._nodes.length")
    page.evaluate("""(id) => {
        const node = window.loom.graph.getNodeById(id);
        node.widgets.find(w => w.name === "width").value = 320;
        node.widgets.find(w => w.name === "batch_size").value = 3;
    }""", latent["id"])
    x, y = page.evaluate(TITLE_POINT, latent["id"])
    page.mouse.click(x, y)
    assert page.evaluate("Object.keys(window.loom.canvas.selected_nodes)") == [str(latent["id"])]
    page.keyboard.press("Control+c")
    page.mouse.move(x + 30, y + 250)
    page.keyboard.press("Control+v")
    page.wait_for_function("window.loom.graph.findNodesByType('EmptyLatentImage').length === 2", timeout=5_000)
    latents = nodes_by_type(page)["EmptyLatentImage"]
    copy = next(n for n in latents if n["id"] != latent["id"])
    assert copy["widgets"] == {"width": 320, "height": latent["widgets"]["height"], "batch_size": 3}
    assert page.evaluate("window.loom.graph._nodes.length") == count + 1
    page.screenshot(path=str(tmp_path / "pasted.png"))


def test_group_survives_a_reload(page: Any, tmp_path: Path) -> None:  # noqa: F811
    page.evaluate("""async () => {
        const { LGraphGroup } = await import("litegraph");
        const g = window.loom.graph;
        const nodes = [g.findNodesByType("CLIPTextEncode")].flat();
        const group = new LGraphGroup("Prompts");
        group.resizeTo(nodes, 20);
        g.add(group);
        window.loom.fitView();
    }""")
    bounding = page.evaluate("[...window.loom.graph.groups[0]._bounding]")
    # The fitted view shows the group's title bar too, not only the nodes.
    assert page.evaluate("window.loom.canvas.ds.convertOffsetToCanvas(window.loom.graph.groups[0]._bounding)[1]") >= 0
    view = page.evaluate(VIEW)
    page.screenshot(path=str(tmp_path / "1-group.png"))
    page.wait_for_timeout(1200)  # the auto-save runs every second
    page.reload()
    page.wait_for_function("window.loom && window.loom.ready", timeout=15_000)
    groups = page.evaluate("window.loom.graph.groups.map(g => ({title: g.title, bounding: [...g._bounding]}))")
    assert groups == [{"title": "Prompts", "bounding": bounding}]
    assert page.evaluate(VIEW) == view  # pan and zoom come back with the graph
    page.screenshot(path=str(tmp_path / "2-group-after-reload.png"))


def test_ctrl_g_groups_the_selected_nodes_and_the_group_moves_them(page: Any, tmp_path: Path) -> None:  # noqa: F811
    page.keyboard.press("Control+g")  # nothing selected: says what to do
    page.wait_for_function("window.loom.status.startsWith('select nodes first')")
    prompts = [n["id"] for n in nodes_by_type(page)["CLIPTextEncode"]]
    for index, node_id in enumerate(prompts):
        x, y = page.evaluate(TITLE_POINT, node_id)
        if index:
            page.keyboard.down("Shift")
        page.mouse.click(x, y)
        page.keyboard.up("Shift")
    assert sorted(page.evaluate("Object.keys(window.loom.canvas.selected_nodes)")) == sorted(map(str, prompts))
    page.keyboard.press("Control+g")
    page.wait_for_function("window.loom.status.startsWith('grouped 2 nodes')")
    inside = page.evaluate("[...window.loom.graph.groups[0].children].map(n => n.id)")
    assert sorted(inside) == sorted(prompts) and page.evaluate("window.loom.graph.groups.length") == 1
    page.screenshot(path=str(tmp_path / "1-grouped.png"))

    before = {node_id: page.evaluate(f"[...window.loom.graph.getNodeById({node_id}).pos]") for node_id in prompts}
    gx, gy = page.evaluate("""() => {
        const { canvas, graph } = window.loom;
        const rect = canvas.canvas.getBoundingClientRect();
        const g = graph.groups[0];
        const [x, y] = canvas.ds.convertOffsetToCanvas([g._bounding[0] + 30, g._bounding[1] + 10]);
        return [rect.left + x, rect.top + y];
    }""")
    scale = page.evaluate("window.loom.canvas.ds.scale")
    page.mouse.move(gx, gy)
    page.mouse.down()
    page.mouse.move(gx + 20, gy + 40, steps=5)
    page.mouse.move(gx + 40, gy + 80, steps=5)
    page.mouse.up()
    for node_id, (x0, y0) in before.items():
        x1, y1 = page.evaluate(f"[...window.loom.graph.getNodeById({node_id}).pos]")
        assert (x1 - x0, y1 - y0) == pytest.approx((40 / scale, 80 / scale), abs=2), node_id
    page.screenshot(path=str(tmp_path / "2-group-moved.png"))


def test_saved_file_loads_back_the_same_graph(page: Any, tmp_path: Path) -> None:  # noqa: F811
    saved = page.evaluate(SERIALIZED)
    with page.expect_download() as info:
        page.click("#save-button")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.name.endswith(".json")
    data = json.loads(path.read_text())
    assert [n["id"] for n in data["nodes"]] == [n["id"] for n in saved["nodes"]]

    page.evaluate("""() => {
        const g = window.loom.graph;
        g.remove(g.findNodesByType("VAEDecode")[0]);
        g.findNodesByType("KSampler")[0].widgets.find(w => w.name === "steps").value = 99;
    }""")
    assert page.evaluate(SERIALIZED) != saved
    page.screenshot(path=str(tmp_path / "1-changed.png"))

    with page.expect_file_chooser() as chooser:
        page.click("#load-button")
    chooser.value.set_files(str(path))
    page.wait_for_function(f"window.loom.status === 'loaded {path.name}'", timeout=5_000)
    assert page.evaluate(SERIALIZED) == saved
    page.screenshot(path=str(tmp_path / "2-loaded-back.png"))


def test_gallery_shows_every_output_image_of_the_history(page: Any, live: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    page.fill("#batch-count", "2")
    page.evaluate(SET_SEED_CONTROL, "increment")
    page.click("#queue-button")
    page.wait_for_function("window.loom.queued.length === 2", timeout=10_000)
    for prompt_id in page.evaluate("window.loom.queued"):
        queued_seed(live.url, prompt_id)  # waits until it is in the history
    with urllib.request.urlopen(live.url + "/history", timeout=10) as response:
        history = json.load(response)
    expected = sum(len(output.get("images", [])) for entry in history.values()
                   for output in entry.get("outputs", {}).values())
    assert expected >= 2

    page.click("#queue-panel-button")
    items = page.locator("#queue-panel .qp-gallery img.qp-gallery-item")
    page.wait_for_function(f"document.querySelectorAll('#queue-panel .qp-gallery-item').length === {expected}",
                           timeout=10_000)
    page.wait_for_function("""() => [...document.querySelectorAll('#queue-panel .qp-gallery-item')]
        .every(img => img.complete && img.naturalWidth === 64)""", timeout=10_000)
    sources = [items.nth(i).get_attribute("src") for i in range(expected)]
    assert all(s.startswith("/view?filename=txt2img_") for s in sources)  # cached reruns repeat a file
    page.locator("#queue-panel .qp-gallery").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "1-gallery.png"))
    items.first.click()
    page.locator("#lightbox img").wait_for()
    page.keyboard.press("Escape")
