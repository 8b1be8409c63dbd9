"""``main.py --cluster``: connect to Ray and build the ClusterRunner that replaces the local worker."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import ray

from engine.cluster.actor import WorkerConfig
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


def worker_settings(settings: Settings) -> Settings:
    """The front's settings as its workers use them: model roots made absolute (each worker resolves them on
    its own machine, where Loom sits at the front's path); no auth token and a loopback host, since a worker
    serves nothing (so the token never travels through Ray)."""
    return settings.model_copy(update={"models_dirs": tuple(Path(p).absolute() for p in settings.models_dirs),
                                       "auth_token": None, "host": "127.0.0.1"})


def worker_config_factory(settings: Settings) -> Callable[[str], WorkerConfig]:
    shared = worker_settings(settings)

    def make(worker_id: str) -> WorkerConfig:
        return WorkerConfig(worker_id=worker_id, settings=shared)

    return make


def build_cluster_runner(settings: Settings, registry: NodeRegistry, queue: PromptQueue,
                         sink_for: Callable[[str | None], EventSink]) -> ClusterRunner:
    assert settings.cluster is not None
    connect(settings.cluster)
    pool = WorkerPool(worker_config_factory(settings),
                      PoolOptions(max_workers=settings.cluster_workers, worker_cpus=settings.worker_cpus))
    return ClusterRunner(queue, registry, settings.folders(), pool, sink_for)
