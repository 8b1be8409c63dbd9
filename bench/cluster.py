"""Scale-out benchmark: how many prompts per second the cluster front dispatches; prints one JSON object.

Starts a local Ray cluster on this machine and a ClusterRunner (the front of ``main.py --cluster``) on
it with the stub nodes of the tests (``tests/support/stub_nodes.py``: StubSleep ->
StubShow), then for each worker count W in ``--workers``:

* ``trivial``: ``--prompts`` prompts that sleep 0 s, all queued at once: prompts/s from the first put to
  the last history entry. Nothing runs long, so this is the front's dispatch ceiling: queue, choice of
  worker, one Ray generator call per prompt, event round trips, history write.
* ``sleeping``: ``W * --rounds`` prompts that sleep ``--sleep`` s: prompts/s against the ideal
  ``W / sleep`` (how well W workers are kept busy).
* ``latency``: one prompt at a time, median seconds from put to history entry.

The reference, in the same run, is the one-machine PromptWorker with an in-process Executor on the same
prompts (``local``). Workers get ``cpus / W`` CPUs each: the stub nodes sleep, they do not compute.

    python bench/cluster.py [--workers 1,2,4] [--prompts 200] [--sleep 0.5] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.cache import OutputCache  # noqa: E402
from engine.cluster.actor import WorkerConfig  # noqa: E402
from engine.cluster.front import ClusterRunner  # noqa: E402
from engine.cluster.pool import PoolOptions, WorkerPool  # noqa: E402
from engine.executor import Executor  # noqa: E402
from engine.folders import Folders  # noqa: E402
from engine.queue import PromptQueue  # noqa: E402
from engine.settings import Settings  # noqa: E402
from engine.worker import PromptWorker  # noqa: E402
from tests.cluster.local_ray import wait_for_free_cpus  # noqa: E402
from tests.support.stub_nodes import registry_with_stubs, sleep_prompt  # noqa: E402

log = logging.getLogger("bench.cluster")
STUBS = "tests.support.stub_nodes:register"


class NullSink:
    def emit(self, event: Any) -> None:
        pass


def drain(queue: PromptQueue, prompts: list[dict[str, Any]], tag: str, timeout: float = 600) -> float:
    """Queue every prompt at once; seconds until the last one is in the history."""
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    start = time.perf_counter()
    for prompt_id, prompt in zip(ids, prompts, strict=True):
        queue.put(prompt_id, prompt, {"client_id": tag}, ["2"])
    deadline = time.monotonic() + timeout
    for prompt_id in ids:  # one query per poll, however many prompts
        while queue.history_entry(prompt_id) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tag}: not finished in {timeout} s")
            time.sleep(0.005)
    return time.perf_counter() - start


def latency(queue: PromptQueue, tag: str, count: int = 15) -> float:
    return statistics.median(drain(queue, [sleep_prompt(10**6 + i, 0.0)], f"{tag}-{i}") for i in range(count))


def measure(queue: PromptQueue, args: argparse.Namespace, workers: int, tag: str,
            cpu_seconds: Callable[[], float]) -> dict[str, Any]:
    drain(queue, [sleep_prompt(-1 - i, 0.0) for i in range(workers * 2)], f"{tag}-warm")  # imports, first runs
    cpu_before = cpu_seconds()
    trivial = drain(queue, [sleep_prompt(i, 0.0) for i in range(args.prompts)], f"{tag}-trivial")
    front_cpu = cpu_seconds() - cpu_before
    count = workers * args.rounds
    sleeping = drain(queue, [sleep_prompt(10**5 + i, args.sleep) for i in range(count)], f"{tag}-sleep")
    return {
        "workers": workers,
        "trivial_prompts_per_s": round(args.prompts / trivial, 1),
        "front_cpu_ms_per_prompt": round(1000 * front_cpu / args.prompts, 2),
        "sleeping_prompts_per_s": round(count / sleeping, 2),
        "sleeping_ideal_per_s": round(workers / args.sleep, 2),
        "sleeping_efficiency": round((count / sleeping) / (workers / args.sleep), 3),
        "latency_median_s": round(latency(queue, tag), 4),
    }


def front_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_local(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    folders = Folders(root / "input", root / "output", root / "temp", (ROOT / "models",))
    folders.ensure()
    with PromptQueue(root / "local.sqlite3") as queue:
        executor = Executor(registry_with_stubs(), folders, OutputCache(10**8, 10_000))
        worker = PromptWorker(queue, executor, lambda _: NullSink())
        worker.start()
        try:
            return measure(queue, args, 1, "local", front_cpu)
        finally:
            worker.stop()


def run_cluster(args: argparse.Namespace, root: Path, workers: int) -> dict[str, Any]:
    folders = Folders(root / "input", root / "output", root / "temp", (ROOT / "models",))
    folders.ensure()
    cpus = ray.cluster_resources().get("CPU", 1.0)

    def make(worker_id: str) -> WorkerConfig:
        settings = Settings(models_dirs=(ROOT / "models",), device="cpu", extra_nodes=(STUBS,))  # one torch thread
        return WorkerConfig(worker_id=worker_id, settings=settings, scratch_dir=str(root / "workers" / worker_id))

    pool = WorkerPool(make, PoolOptions(max_workers=workers, worker_cpus=cpus / workers))
    with PromptQueue(root / f"cluster{workers}.sqlite3") as queue:
        started = time.perf_counter()
        runner = ClusterRunner(queue, registry_with_stubs(), folders, pool, lambda _: NullSink())
        runner.start()
        start_s = time.perf_counter() - started
        try:
            result = measure(queue, args, workers, f"cluster{workers}", front_cpu)
        finally:
            runner.stop()
        wait_for_free_cpus()
    return {**result, "workers_started": len(pool.all()), "start_s": round(start_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    result: dict[str, Any] = {"machine": {"cpus": cpus, "ray": ray.__version__}, "prompts": args.prompts,
                              "sleep_s": args.sleep}
    with tempfile.TemporaryDirectory(prefix="loom-bench-cluster-") as tmp:
        root = Path(tmp)
        result["local"] = run_local(args, root / "local")
        result["cluster"] = [run_cluster(args, root / f"w{n}", n) for n in map(int, args.workers.split(","))]
    ray.shutdown()
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
