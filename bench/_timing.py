"""Timing helpers shared by the bench scripts that compare Loom with a reference in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["best_alternating", "seconds"]


def seconds(run: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_alternating(first: Callable[[], Any], second: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best seconds of each, run in ABBA order (A B, then B A, ...) so that a load that changes during the run
    (a shared machine) does not favour the one that ran last."""
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(repeats):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            times[which].append(seconds((first, second)[which]))
    return min(times[0]), min(times[1])
