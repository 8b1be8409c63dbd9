"""LoomWorker as a plain object (the class Ray wraps): submit, poll, shipped files, interrupt."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.cluster.actor import EventMessage, Job, JobResult, LoomWorker, ShippedFile, WorkerConfig
from engine.queue import QueueItem
from engine.settings import Settings
from tests.cluster.conftest import REPO, STUBS
from tests.support.stub_nodes import sleep_prompt


@pytest.fixture
def worker(tmp_path: Path) -> LoomWorker:
    settings = Settings(models_dirs=(REPO / "models",), device="cpu", extra_nodes=(STUBS,))
    return LoomWorker(WorkerConfig(worker_id="t1", settings=settings, scratch_dir=str(tmp_path / "scratch")))


def _job(prompt_id: str, prompt: dict[str, Any], outputs: list[str], files: list[ShippedFile] | None = None) -> Job:
    return Job(QueueItem(1.0, prompt_id, prompt, {"client_id": "c"}, outputs), files or [])


def _collect(worker: LoomWorker, prompt_id: str, timeout: float = 60) -> tuple[list[EventMessage], JobResult]:
    messages: list[EventMessage] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in worker.poll(prompt_id, 0.2):
            if isinstance(message, JobResult):
                return messages, message
            messages.append(message)
    raise AssertionError(f"{prompt_id} did not finish")


def test_describe_lists_the_model_files_of_each_folder_a_node_names(worker: LoomWorker) -> None:
    info = worker.describe()
    assert info["worker_id"] == "t1" and info["device"] == "cpu"
    assert "tiny-shapes.safetensors" in info["models"]["checkpoints"]
    assert "tiny-shapes-dark.safetensors" in info["models"]["loras"]
    assert "input" not in info["models"]
    assert "embeddings" in info["models"]  # named in prompt text, not by an input: listed for routing


def test_submit_then_poll_gives_the_events_then_the_result_once(worker: LoomWorker) -> None:
    worker.submit(_job("p1", sleep_prompt(4, 0.2), ["2"]))
    messages, result = _collect(worker, "p1")
    types = [m.event.type for m in messages]
    assert types[0] == "execution_start" and types[-1] == "execution_success"
    assert types.count("progress") == 4 and "executed" in types
    assert result.outcome.status_str == "success" and result.outcome.outputs["2"]["text"] == ["4"]
    with pytest.raises(KeyError, match="runs no prompt p1"):
        worker.poll("p1", 0)  # the result ended it


def test_an_image_travels_once_with_its_executed_event(worker: LoomWorker) -> None:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1,
                                                           "color": 0xFF0000}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ship"}}}
    worker.submit(_job("img", prompt, ["2"]))
    messages, result = _collect(worker, "img")
    [executed] = [m for m in messages if m.event.type == "executed"]
    [shipped] = executed.files
    assert (shipped.kind, shipped.filename) == ("output", "ship_00001_.png")
    picture = Image.open(io.BytesIO(shipped.data))
    assert picture.size == (32, 16) and picture.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert result.files == []  # already sent with the event
    kept = worker.folders.output_dir / "ship_00001_.png"
    assert kept.is_file() and kept.stat().st_size == 0  # the front has the bytes; the name stays taken

    worker.submit(_job("img-again", prompt, ["2"]))  # cached: nothing to send again
    messages, result = _collect(worker, "img-again")
    assert [f for m in messages for f in m.files] == [] and result.files == []
    prompt["1"]["inputs"]["color"] = 0x00FF00
    worker.submit(_job("img-green", prompt, ["2"]))
    messages, _ = _collect(worker, "img-green")
    assert [f.filename for m in messages for f in m.files] == ["ship_00002_.png"]


def test_shipped_inputs_are_rewritten_only_when_their_bytes_change(worker: LoomWorker, tmp_path: Path) -> None:
    data = (REPO / "workflows" / "inputs" / "tiny-shapes-red-circle.png").read_bytes()
    shipped = ShippedFile("input", "", "circle.png", data)
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "circle.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}}}
    worker.submit(_job("in1", prompt, ["2"], [shipped]))
    assert _collect(worker, "in1")[1].outcome.status_str == "success"
    path = tmp_path / "scratch" / "input" / "circle.png"
    first = path.stat().st_mtime_ns
    time.sleep(0.01)
    worker.submit(_job("in2", prompt, ["2"], [shipped]))
    messages, _ = _collect(worker, "in2")
    assert path.stat().st_mtime_ns == first  # same bytes: left alone, so LoadImage's cache entry holds
    assert "execution_cached" in [m.event.type for m in messages]


def test_interrupt_stops_the_named_prompt(worker: LoomWorker) -> None:
    worker.submit(_job("long", sleep_prompt(1, 30.0), ["2"]))
    deadline = time.monotonic() + 30
    seen: list[str] = []
    while "progress" not in seen:
        assert time.monotonic() < deadline
        seen += [m.event.type for m in worker.poll("long", 0.2) if isinstance(m, EventMessage)]
    assert not worker.interrupt("another")
    assert worker.interrupt("long")
    _, result = _collect(worker, "long", timeout=10)
    assert result.outcome.messages[-1][0] == "execution_interrupted"


def test_an_interrupt_that_overtakes_its_submit_still_stops_the_prompt(worker: LoomWorker) -> None:
    """The front's interrupt and submit calls run on different actor threads and may arrive in either order."""
    assert not worker.interrupt("early")  # nothing runs it yet: kept for it
    worker.submit(_job("early", sleep_prompt(2, 30.0), ["2"]))
    _, result = _collect(worker, "early", timeout=10)
    assert result.outcome.messages[-1][0] == "execution_interrupted"
