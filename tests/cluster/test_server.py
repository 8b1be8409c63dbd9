"""The HTTP/websocket API in front of a Ray cluster: what a client sees is what one machine shows it."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.cluster.front import ClusterRunner
from engine.cluster.pool import PoolOptions, WorkerPool
from tests.api.conftest import LiveServer, collect_until_done, start_live_server
from tests.cluster.conftest import REPO, txt2img_prompt, worker_configs
from tests.cluster.local_ray import wait_for_free_cpus
from tests.support.stub_nodes import sleep_prompt


def _cluster_runner_factory(root: Path) -> Callable[..., ClusterRunner]:
    def make(queue: Any, registry: Any, folders: Any, sink_for: Any) -> ClusterRunner:
        pool = WorkerPool(worker_configs(root, lambda _: [REPO / "models"]), PoolOptions(max_workers=2))
        return ClusterRunner(queue, registry, folders, pool, sink_for, check_interval=1.0)

    return make


def _run(server: LiveServer, prompt: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The websocket messages of one prompt (queue status aside) and its history entry."""
    ws = server.ws("watcher")
    try:
        prompt_id = server.queue_prompt(prompt, client_id="watcher")
        messages = collect_until_done(ws, prompt_id)
    finally:
        ws.close()
    return [m for m in messages if m["type"] != "status"], server.wait_history(prompt_id)


def _shape(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(m["type"], m["data"].get("node"), m["data"].get("value"), m["data"].get("max")) for m in messages]


def test_websocket_messages_history_and_view_through_the_cluster_match_one_machine(
        ray_cluster: Any, tmp_path: Path) -> None:
    servers = {
        "cluster": start_live_server(tmp_path / "front", make_runner=_cluster_runner_factory(tmp_path),
                                     models_dirs=(REPO / "models",)),
        "local": start_live_server(tmp_path / "local", models_dirs=(REPO / "models",)),
    }
    try:
        seen: dict[str, Any] = {}
        for name, server in servers.items():
            stub_messages, _ = _run(server, sleep_prompt(3, 0.2))
            messages, entry = _run(server, txt2img_prompt(42, steps=3, prefix="wire"))
            image = entry["outputs"]["9"]["images"][0]
            view = server.get(f"/view?filename={image['filename']}&type=output&subfolder={image['subfolder']}")
            assert view.status == 200, view.body
            pixels = np.asarray(Image.open(io.BytesIO(view.body)).convert("RGB"), dtype=np.int16)
            seen[name] = (_shape(stub_messages), _shape(messages), entry, image, pixels, messages)
    finally:
        servers["local"].stop()
        servers["cluster"].stop()
        wait_for_free_cpus()
    cluster, local = seen["cluster"], seen["local"]
    assert cluster[0] == local[0]  # stub prompt: execution_start ... executing None, in the same order
    assert cluster[1] == local[1]  # txt2img: the same messages, progress steps included
    assert cluster[2]["status"]["status_str"] == local[2]["status"]["status_str"] == "success"
    assert cluster[3] == local[3] == {"filename": "wire_00001_.png", "subfolder": "", "type": "output"}
    assert np.abs(cluster[4] - local[4]).max() <= 2  # the same picture, up to CPU thread-count rounding
    executed = next(m for m in cluster[5] if m["type"] == "executed")
    assert executed["data"]["output"]["images"][0] == cluster[3]
    assert ("progress", "3", 3, 3) in cluster[1]
