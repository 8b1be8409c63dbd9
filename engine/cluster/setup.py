"""``main.py --cluster``: connect to Ray and build the ClusterRunner that replaces the local worker."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import ray

from engine.cluster.actor import BUILTIN_NODES, WorkerConfig
from engine.cluster.front import ClusterRunner
from engine.cluster.pool import PoolOptions, WorkerPool
from engine.events import EventSink
from engine.queue import PromptQueue
from engine.registry import NodeRegistry
from engine.settings import Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` ('auto': the one this machine belongs to, else a new local one).

    Workers import Loom from the same path as the front (install it there on every machine)."""
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                             os.environ.get("PYTHONPATH")]))}}
    ray.init(address=None if address == "auto" else address, runtime_env=runtime_env,
             logging_level=logging.WARNING, log_to_driver=True)
    log.info("Ray cluster: %s", ray.cluster_resources())


def worker_config_factory(settings: Settings) -> Callable[[str], WorkerConfig]:
    def make(worker_id: str) -> WorkerConfig:
        return WorkerConfig(
            worker_id=worker_id, models_dirs=[str(Path(p).absolute()) for p in settings.models_dirs],
            node_modules=[BUILTIN_NODES, *settings.extra_nodes], device=settings.device,
            vram_mode=settings.vram_mode, vram_budget=settings.vram_budget, ram_budget=settings.ram_budget,
            cache_bytes=settings.cache_bytes, cache_entries=settings.cache_entries,
            previews=settings.preview_method != "none",
            torch_threads=max(1, int(settings.worker_cpus)))
    return make


def build_cluster_runner(settings: Settings, registry: NodeRegistry, queue: PromptQueue,
                         sink_for: Callable[[str | None], EventSink]) -> ClusterRunner:
    assert settings.cluster is not None
    connect(settings.cluster)
    pool = WorkerPool(worker_config_factory(settings),
                      PoolOptions(max_workers=settings.cluster_workers, worker_cpus=settings.worker_cpus))
    return ClusterRunner(queue, registry, settings.folders(), pool, sink_for)
