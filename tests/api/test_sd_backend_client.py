"""A second real client: sd-backend-client (PyPI, Unlicense), whose pydantic models are the strictest
published contract of ComfyUI's responses (system_stats, object_info, queue, history, uploads).

Its txt2img needs the Stable Diffusion nodes; here it drives everything else against Loom.
"""

from __future__ import annotations

import time

import pytest
from PIL import Image

from tests.api.conftest import LiveServer, chain_prompt

sd_backend_client = pytest.importorskip("sd_backend_client", reason="pip install sd-backend-client")

from sd_backend_client.api.comfyui.comfyui_types import NodeInfoResponse  # noqa: E402
from sd_backend_client.api.comfyui_webservice import (  # noqa: E402
    AsyncTaskStatus,
    ComfyModelType,
    ComfyUiWebservice,
)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> ComfyUiWebservice:
    return ComfyUiWebservice(server.url, live_progress=False)


def test_schemas_validate(server: LiveServer, client: ComfyUiWebservice) -> None:
    stats = client.get_system_stats()
    assert stats.devices and stats.system.python_version
    for name, info in server.get("/object_info").json().items():
        assert NodeInfoResponse.model_validate(info).name == name
    assert client.get_embeddings() == []
    assert "checkpoints" in client.get_model_types() and "configs" in client.get_model_types()
    assert client.get_models(ComfyModelType.CHECKPOINT) == []
    assert client.get_models(ComfyModelType.CONFIG) == []
    assert client.get_extensions() == []
    queue = client.get_queue_info()
    assert queue.queue_running == [] and queue.queue_pending == []


def test_task_status_through_history(server: LiveServer, client: ComfyUiWebservice) -> None:
    prompt_id = server.queue_prompt(chain_prompt(4001))
    server.wait_history(prompt_id)
    assert client.check_queue_entry(prompt_id).status == AsyncTaskStatus.FINISHED
    failed = server.queue_prompt(chain_prompt(4002, middle="StubFail"))
    server.wait_history(failed)
    progress = client.check_queue_entry(failed)
    assert progress.status == AsyncTaskStatus.FAILED and progress.error
    assert client.check_queue_entry("unknown-prompt").status == AsyncTaskStatus.NOT_FOUND


def test_upload_mask_and_download(server: LiveServer, client: ComfyUiWebservice) -> None:
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    ref = client.upload_image(image, name="sdbc", subfolder="sdbc")
    assert ref.type == "input" and (server.settings.input_dir / ref.subfolder / ref.filename).is_file()
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    mask_ref = client.upload_mask(mask, ref)
    masked = client.download_images([mask_ref])[0]
    assert masked.size == (16, 16)
    assert masked.getpixel((0, 0))[3] == 0 and masked.getpixel((15, 15))[3] == 255
    assert client.download_images([ref])[0].convert("RGB").getpixel((3, 3)) == (10, 200, 30)


def test_interrupt_and_free(server: LiveServer, client: ComfyUiWebservice) -> None:
    server.controls.gate.clear()
    server.controls.entered.clear()
    try:
        running = server.queue_prompt(chain_prompt(4003, middle="StubGate", tag="sdbc"))
        assert server.controls.entered.wait(10)
        waiting = server.queue_prompt(chain_prompt(4004))
        client.remove_from_queue(waiting)
        assert server.get("/queue").json()["queue_pending"] == []
        client.interrupt()
        deadline = time.monotonic() + 10
        while client.check_queue_entry(running).status != AsyncTaskStatus.FAILED:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client.free_memory()
    finally:
        server.controls.gate.set()
        server.wait_idle()
