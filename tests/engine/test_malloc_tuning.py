"""glibc malloc settings: a worker thread's large tensors reuse freed heap memory instead of faulting in new
pages, and release_free_memory gives the kept memory back. Each case runs in a fresh interpreter (the
settings must come before any thread starts and are process-wide)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from main import parse_args, settings_from

ROOT = Path(__file__).resolve().parents[2]

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt")

THREAD_FAULTS = """
import json, resource, sys, threading
from engine.malloc_tuning import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else False
import torch
import torch.nn.functional as F
torch.manual_seed(0)
x = torch.randn(1, 16, 512, 512)  # 16 MiB activations, 32 MiB in the middle
w1, w2 = torch.randn(32, 16, 3, 3) * 0.1, torch.randn(16, 32, 3, 3) * 0.1
faults = {}
def forward():
    with torch.inference_mode():
        return F.conv2d(F.silu(F.conv2d(x, w1, padding=1)), w2, padding=1) + x
def work():
    forward()
    forward()  # warm: what a step allocates is in the heap now, if it is kept
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        forward()
    faults["n"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
thread = threading.Thread(target=work)  # prompts run on the worker thread
thread.start()
thread.join()
print(json.dumps({"tuned": tuned, "faults": faults["n"]}))
"""

RELEASE = """
import json
from pathlib import Path
from engine.malloc_tuning import release_free_memory, tune_malloc
def rss():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024
tuned = tune_malloc()
import torch
start = rss()
blocks = [torch.ones(16 << 20) for _ in range(6)]  # 384 MiB
del blocks
kept = rss() - start
released = release_free_memory()
print(json.dumps({"tuned": tuned, "kept": kept, "after_release": rss() - start, "released": released}))
"""


def run(script: str, *args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout)


@glibc_only
def test_a_worker_threads_tensors_reuse_freed_memory() -> None:
    plain = run(THREAD_FAULTS, "plain")
    tuned = run(THREAD_FAULTS, "tuned")
    assert tuned["tuned"] is True
    # 4 passes of about 80 MiB of activations: faulted in anew every time without the settings, reused with them
    assert plain["faults"] > 40_000  # type: ignore[operator]
    assert tuned["faults"] < plain["faults"] / 10  # type: ignore[operator]


@glibc_only
def test_release_gives_the_kept_memory_back() -> None:
    result = run(RELEASE)
    assert result["tuned"] is True and result["released"] is True
    assert result["kept"] > 300 * 2**20  # type: ignore[operator]
    assert result["after_release"] < 64 * 2**20  # type: ignore[operator]


def test_the_settings_can_be_left_alone() -> None:
    assert settings_from(parse_args([])).malloc_tuning is True
    assert settings_from(parse_args(["--no-malloc-tuning"])).malloc_tuning is False
    assert settings_from(parse_args(["run", "w.json", "--no-malloc-tuning"])).malloc_tuning is False
