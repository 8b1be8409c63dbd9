"""Files in and out of the editor: LoadImage upload and drop, workflow PNG drop, Export API.

Runs in Debian's chromium against a live server, with the fixtures of ``test_editor``.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.workflow import ui_to_api
from tests.api.conftest import LiveServer
from tests.frontend.test_editor import live, nodes_by_type, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
RED_CIRCLE = REPO / "workflows" / "inputs" / "tiny-shapes-red-circle.png"

ADD_LOAD_IMAGE = """async () => {
    const { LiteGraph } = await import("litegraph");
    const node = LiteGraph.createNode("LoadImage");
    node.pos = [40, 520];
    window.loom.graph.add(node);
    window.loom.fitView();
    return node.id;
}"""

DROP = """async ([b64, name, type, target]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, { type }));
    const { canvas, graph } = window.loom;
    const rect = canvas.canvas.getBoundingClientRect();
    let at = [rect.left + 5, rect.bottom - 5];
    if (target !== null) {
        const node = graph.getNodeById(target);
        const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + 10]);
        at = [rect.left + x, rect.top + y];
    } else if (graph.getNodeOnPos(...canvas.convertEventToCanvasOffset({ clientX: at[0], clientY: at[1] }))) {
        throw new Error("the drop point is on a node");
    }
    canvas.canvas.dispatchEvent(new DragEvent("drop", {
        dataTransfer: data, clientX: at[0], clientY: at[1], bubbles: true, cancelable: true,
    }));
}"""


def drop(browser_page: Any, data: bytes, name: str, mime: str, target: int | None = None) -> None:
    """Dispatch a drop of one file on the canvas: on node `target`, or on empty canvas when None."""
    browser_page.evaluate(DROP, [base64.b64encode(data).decode(), name, mime, target])


def test_load_image_upload_button_and_drop(page: Any, live: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    node_id = page.evaluate(ADD_LOAD_IMAGE)
    with page.expect_file_chooser() as chooser:
        page.evaluate(f"""() => window.loom.graph.getNodeById({node_id}).widgets
            .find(w => w.type === "button").callback()""")
    chooser.value.set_files(str(RED_CIRCLE))
    page.wait_for_function(f"window.loom.graph.getNodeById({node_id}).widgets[0].value === '{RED_CIRCLE.name}'")
    assert (live.settings.input_dir / RED_CIRCLE.name).read_bytes() == RED_CIRCLE.read_bytes()
    assert RED_CIRCLE.name in page.evaluate(f"window.loom.graph.getNodeById({node_id}).widgets[0].options.values")
    page.wait_for_function(f"window.loom.state.images.get('{node_id}')?.[0]?.naturalWidth > 0")
    assert page.evaluate("window.loom.status") == f"uploaded {RED_CIRCLE.name}"
    page.screenshot(path=str(tmp_path / "1-uploaded.png"))

    drop(page, RED_CIRCLE.read_bytes(), "dropped-circle.png", "image/png", node_id)
    page.wait_for_function(f"window.loom.graph.getNodeById({node_id}).widgets[0].value === 'dropped-circle.png'")
    assert (live.settings.input_dir / "dropped-circle.png").is_file()
    # the upload button is not a value: the workflow's widgets_values stay ComfyUI's [image, "image"]
    values = page.evaluate(f"window.loom.graph.getNodeById({node_id}).serialize().widgets_values")
    assert values[0] == "dropped-circle.png" and len(values) <= 2
    page.screenshot(path=str(tmp_path / "2-dropped.png"))


def test_dropping_a_generated_png_restores_its_workflow(page: Any, live: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    before = nodes_by_type(page)
    page.click("#queue-button")
    page.wait_for_function("Object.keys(window.loom.outputs).length > 0", timeout=60_000)
    url = next(iter(page.evaluate("window.loom.outputs").values()))[0]
    png = page.request.get(live.url + url).body()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    page.evaluate("""() => {
        const g = window.loom.graph;
        g.findNodesByType("KSampler")[0].widgets[0].value = 7;
        g.remove(g.findNodesByType("VAEDecode")[0]);
    }""")
    assert nodes_by_type(page) != before
    drop(page, png, "generated.png", "image/png")
    page.wait_for_function("window.loom.status.startsWith('loaded the workflow of generated.png')")
    assert nodes_by_type(page) == before
    page.screenshot(path=str(tmp_path / "3-restored.png"))

    drop(page, json.dumps({"1": {"class_type": "X", "inputs": {}}}).encode(), "api.json", "application/json")
    page.wait_for_function("window.loom.status.startsWith('could not load api.json')")

    workflow = page.evaluate("window.loom.graph.serialize()")
    workflow["nodes"] = [n for n in workflow["nodes"] if n["type"] != "SaveImage"]
    drop(page, json.dumps(workflow).encode(), "edited.json", "application/json")
    page.wait_for_function("window.loom.status === 'loaded edited.json'")
    assert "SaveImage" not in nodes_by_type(page)


def test_export_api_matches_the_server_conversion(page: Any, live: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    page.evaluate(ADD_LOAD_IMAGE)
    with page.expect_download() as download:
        page.click("#export-api-button")
    path = tmp_path / "workflow_api.json"
    download.value.save_as(path)
    exported = json.loads(path.read_text())
    expected = ui_to_api(page.evaluate("window.loom.graph.serialize()"), live.registry)
    assert {k: (v["class_type"], v["inputs"]) for k, v in exported.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in expected.items()}
    assert any(v["class_type"] == "KSampler" for v in exported.values())
    page.screenshot(path=str(tmp_path / "4-exported.png"))


def test_api_format_files_and_pngs_open_laid_out(page: Any, live: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    default = json.loads((REPO / "workflows" / "img2img.json").read_text())
    api = ui_to_api(default, live.registry)
    api[next(k for k, v in api.items() if v["class_type"] == "KSampler")]["inputs"]["steps"] = 9
    drop(page, json.dumps(api).encode(), "img2img_api.json", "application/json")
    page.wait_for_function("window.loom.status === 'loaded img2img_api.json (API format, laid out)'")
    opened = page.evaluate("window.loom.graph.serialize()")
    assert ui_to_api(opened, live.registry) == api
    assert nodes_by_type(page)["KSampler"][0]["widgets"]["steps"] == 9
    page.screenshot(path=str(tmp_path / "5-api-json-opened.png"))

    buffer = io.BytesIO()  # a PNG with only an API prompt, as some clients save
    info = PngInfo()
    info.add_text("prompt", json.dumps(ui_to_api(json.loads((REPO / "workflows" / "lora.json").read_text()),
                                                 live.registry)))
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
    drop(page, buffer.getvalue(), "api-only.png", "image/png")
    page.wait_for_function("window.loom.status === 'loaded the API-format prompt of api-only.png'")
    assert "LoraLoader" in nodes_by_type(page)
    page.click("#queue-button")
    page.wait_for_function("window.loom.status === 'done'", timeout=60_000)
    page.screenshot(path=str(tmp_path / "6-api-png-opened-and-run.png"))
