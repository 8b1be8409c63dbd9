"""Helpers for a Ray cluster on this machine (the cluster tests and bench/cluster.py)."""

from __future__ import annotations

import time

import ray


def wait_for_free_cpus(timeout: float = 60) -> None:
    """Wait until Ray has every CPU back (killed workers release theirs a moment after they die)."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray did not free the workers' CPUs: {ray.available_resources()}")
        time.sleep(0.1)
