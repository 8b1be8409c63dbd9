"""A local Ray cluster of two one-CPU nodes and a ClusterRunner on it, for the scale-out tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.folders import Folders
from engine.queue import PromptQueue
from engine.settings import Settings

ray = pytest.importorskip("ray", reason="Ray missing: pip install -e '.[cluster]'")

from engine.cluster.actor import WorkerConfig  # noqa: E402
from engine.cluster.front import ClusterRunner  # noqa: E402
from engine.cluster.pool import PoolOptions, WorkerPool  # noqa: E402
from tests.cluster.local_ray import wait_for_free_cpus  # noqa: E402
from tests.support.events import RecordingSinks  # noqa: E402
from tests.support.stub_nodes import registry_with_stubs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STUBS = "tests.support.stub_nodes:register"
TIMEOUT = 120.0


@dataclass
class Cluster:
    runner: ClusterRunner
    pool: WorkerPool
    queue: PromptQueue
    folders: Folders
    sinks: RecordingSinks

    def queue_prompt(self, prompt: dict[str, Any], prompt_id: str, client_id: str | None = None) -> str:
        outputs = [nid for nid, n in prompt.items() if n["class_type"] in ("StubShow", "SaveImage")]
        self.queue.put(prompt_id, prompt, {"client_id": client_id or prompt_id}, outputs)
        return prompt_id

    def wait(self, prompt_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.queue.history_entry(prompt_id)
            if entry is not None:
                return entry
            time.sleep(0.05)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster of two nodes ("machines") of one CPU each, Ray's own multi-node test harness
    (``ray.cluster_utils.Cluster``: one raylet per node), for the tests of this folder; tests may add and
    remove nodes. Stopped after the folder's tests."""
    from ray.cluster_utils import Cluster as RayNodes

    nodes = RayNodes(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def worker_configs(root: Path, models_dirs: Callable[[str], list[Path]],
                   extra_nodes: tuple[str, ...] = ()) -> Callable[[str], WorkerConfig]:
    """Per worker id: the built-in and stub nodes, its model roots, one CPU (one torch thread), scratch under root."""

    def make(worker_id: str) -> WorkerConfig:
        settings = Settings(models_dirs=tuple(models_dirs(worker_id)), device="cpu", extra_nodes=(STUBS, *extra_nodes))
        return WorkerConfig(worker_id=worker_id, settings=settings, scratch_dir=str(root / "workers" / worker_id))

    return make


def start_cluster(root: Path, models_dirs: Callable[[str], list[Path]], *, max_workers: int | None = 2,
                  check_interval: float = 1.0, extra_nodes: tuple[str, ...] = ()) -> Cluster:
    folders = Folders(root / "input", root / "output", root / "temp", (REPO / "models",))
    folders.ensure()
    make = worker_configs(root, models_dirs, extra_nodes)
    pool = WorkerPool(make, PoolOptions(max_workers=max_workers))
    queue = PromptQueue(root / "queue.sqlite3")
    sinks = RecordingSinks()
    runner = ClusterRunner(queue, registry_with_stubs(), folders, pool, sinks.sink_for,
                           check_interval=check_interval)
    runner.start()
    return Cluster(runner, pool, queue, folders, sinks)


@pytest.fixture(scope="module")
def cluster(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = start_cluster(tmp_path_factory.mktemp("cluster"), lambda _: [REPO / "models"])
    yield started
    stop_cluster(started)


def stop_cluster(cluster: Cluster) -> None:
    """Stop the runner and wait until Ray has the killed workers' CPUs back for the next cluster."""
    cluster.runner.stop()
    cluster.queue.close()
    wait_for_free_cpus()


def txt2img_prompt(seed: int, steps: int = 4, prefix: str = "cluster") -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background",
                                                         "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 8.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                                   "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }
