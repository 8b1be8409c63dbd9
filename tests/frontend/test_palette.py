"""The node palette sidebar: build txt2img from an empty graph by searching and clicking, then queue it.

Same setup as test_editor.py (``pytest -m browser``); screenshots of each step go to the test's tmp folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.frontend.test_editor import live, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

PROMPT = "a red circle on a blue background"


def add_from_palette(page: Any, node_type: str, query: str) -> int:  # noqa: F811
    """Type `query` into the palette search and click the entry of `node_type`; returns the new node's id."""
    before = page.evaluate("window.loom.graph._nodes.length")
    page.fill("#palette-search", query)
    page.click(f'#node-palette .palette-item[data-type="{node_type}"]')
    page.wait_for_function(f"window.loom.graph._nodes.length === {before + 1}")
    return page.evaluate("window.loom.graph._nodes[window.loom.graph._nodes.length - 1].id")


def visible_types(page: Any) -> list[str]:  # noqa: F811
    return page.evaluate("""() => [...document.querySelectorAll('#node-palette .palette-item')]
        .filter(b => b.offsetParent !== null).map(b => b.dataset.type)""")


def test_palette_is_open_and_search_filters(page: Any, tmp_path: Path) -> None:  # noqa: F811
    assert page.is_visible("#node-palette")
    # The default graph stays fully visible beside the open palette.
    inside = page.evaluate("""() => {
        const {graph, canvas} = window.loom, el = canvas.canvas;
        return graph._nodes.every(n => {
            const [x, y] = canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - 30]);
            const [r, b] = canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
            return x >= 0 && y >= 0 && r <= el.clientWidth && b <= el.clientHeight;
        });
    }""")
    assert inside
    categories = page.evaluate("""() => [...document.querySelectorAll('#node-palette details > summary')]
        .map(s => s.textContent)""")
    assert {"loaders", "sampling", "latent", "conditioning", "image"} <= set(categories)
    page.screenshot(path=str(tmp_path / "1-palette.png"))

    page.fill("#palette-search", "ksamp")
    types = visible_types(page)
    assert set(types) == {"KSampler", "KSamplerAdvanced", "KSamplerSelect"}
    assert types[0] == "KSampler"
    page.screenshot(path=str(tmp_path / "2-search-ksamp.png"))

    page.fill("#palette-search", "")
    assert len(page.query_selector_all("#node-palette .palette-item")) > 20
    page.click("#palette-button")
    assert not page.is_visible("#node-palette")
    assert page.evaluate("window.loom.canvas.canvas.clientWidth") == 1280
    page.click("#palette-button")
    assert page.is_visible("#node-palette")


def test_build_txt2img_from_the_palette_and_queue(page: Any, tmp_path: Path) -> None:  # noqa: F811
    page.evaluate("() => { window.loom.graph.clear(); window.loom.canvas.setDirty(true, true); }")
    assert page.evaluate("window.loom.graph._nodes.length") == 0

    ids = {
        "ckpt": add_from_palette(page, "CheckpointLoaderSimple", "checkpoint"),
        "pos": add_from_palette(page, "CLIPTextEncode", "clip text"),
        "neg": add_from_palette(page, "CLIPTextEncode", "cliptextencode"),
        "latent": add_from_palette(page, "EmptyLatentImage", "empty latent"),
    }
    page.screenshot(path=str(tmp_path / "3-first-nodes.png"))
    # Enter in the search box adds the best match.
    page.fill("#palette-search", "ksampler")
    page.press("#palette-search", "Enter")
    page.wait_for_function("window.loom.graph.findNodesByType('KSampler').length === 1")
    ids["sampler"] = page.evaluate("window.loom.graph.findNodesByType('KSampler')[0].id")
    ids["decode"] = add_from_palette(page, "VAEDecode", "vae decode")
    ids["save"] = add_from_palette(page, "SaveImage", "save")
    page.screenshot(path=str(tmp_path / "4-all-nodes.png"))

    positions = page.evaluate("window.loom.graph._nodes.map(n => n.pos.join(','))")
    assert len(set(positions)) == len(positions), "nodes added one after another overlap exactly"

    linked = page.evaluate("""(ids) => {
        const g = window.loom.graph, n = (k) => g.getNodeById(ids[k]);
        const link = (a, slot, b, name) => !!n(a).connect(slot, n(b), n(b).findInputSlot(name));
        const ok = [
            link("ckpt", 0, "sampler", "model"), link("ckpt", 1, "pos", "clip"), link("ckpt", 1, "neg", "clip"),
            link("pos", 0, "sampler", "positive"), link("neg", 0, "sampler", "negative"),
            link("latent", 0, "sampler", "latent_image"), link("sampler", 0, "decode", "samples"),
            link("ckpt", 2, "decode", "vae"), link("decode", 0, "save", "images"),
        ];
        const widget = (k, name) => n(k).widgets.find(w => w.name === name);
        widget("pos", "text").value = "a red circle on a blue background";
        widget("latent", "width").value = 64;
        widget("latent", "height").value = 64;
        n("ckpt").pos = [20, 200]; n("pos").pos = [340, 40]; n("neg").pos = [340, 300];
        n("latent").pos = [340, 560]; n("sampler").pos = [660, 100]; n("decode").pos = [980, 100];
        n("save").pos = [980, 260];
        window.loom.fitView();
        return ok;
    }""", ids)
    assert all(linked), linked
    page.screenshot(path=str(tmp_path / "5-linked.png"))

    page.click("#queue-button")
    page.wait_for_function("window.loom.queued.length === 1", timeout=10_000)
    page.wait_for_function("window.loom.state.progress > 0 || window.loom.status === 'done'", timeout=60_000)
    page.screenshot(path=str(tmp_path / "6-running.png"))
    save_id = str(ids["save"])
    page.wait_for_function(f"(window.loom.outputs['{save_id}'] || []).length > 0", timeout=60_000)
    page.wait_for_function(f"window.loom.state.images.get('{save_id}')[0].naturalWidth > 0")
    assert page.evaluate(f"window.loom.state.images.get('{save_id}')[0].naturalWidth") == 64
    page.wait_for_function("window.loom.status === 'done'")
    page.screenshot(path=str(tmp_path / "7-done.png"))


def test_drag_from_palette_places_node_at_drop_point(page: Any, tmp_path: Path) -> None:  # noqa: F811
    page.fill("#palette-search", "vae decode")
    before = page.evaluate("window.loom.graph._nodes.length")
    page.drag_and_drop('#node-palette .palette-item[data-type="VAEDecode"]', "#graph-canvas",
                       target_position={"x": 500, "y": 600})
    page.wait_for_function(f"window.loom.graph._nodes.length === {before + 1}")
    at = page.evaluate("""() => {
        const {graph, canvas} = window.loom, node = graph._nodes[graph._nodes.length - 1];
        return [node.type, ...canvas.ds.convertOffsetToCanvas(node.pos).map(Math.round)];
    }""")
    assert at[0] == "VAEDecode" and abs(at[1] - 500) <= 2 and abs(at[2] - 600) <= 2
    page.screenshot(path=str(tmp_path / "8-dropped.png"))
