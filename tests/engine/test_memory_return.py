"""After POST /free a server gives its memory back (issue 15, item 4), and the output cache's default
budget scales with the machine.

A real ``python main.py`` runs a few hundred model-free prompts whose outputs (images of a new width
each time, so nothing is cached twice) grow the output cache by hundreds of MB; its
RSS after POST /free must come back to within 300 MB of its RSS after start.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from engine.settings import Settings, default_cache_bytes
from tests.engine.test_startup import ROOT, _drain, _read_until_listening

MB = 1024**2
PROMPTS = 250
TOLERANCE = 300 * MB
CACHE_BYTES = 1024 * MB


def _rss(pid: int) -> int:
    """Resident set size of a process, from /proc (bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def _request(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"null")


def _big_output_prompt(width: int) -> dict[str, Any]:
    """Two cached outputs of ~0.8 MB (a 256 x width image and its inverse), previewed as an 8x8 thumbnail.
    Many mid-sized blocks between small ones: glibc keeps that memory after free unless trimmed (measured
    here: +650 MB after /free without malloc_trim, +140 MB with it)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 256, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                      "width": 8, "height": 8, "crop": "disabled"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def _wait_idle(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = _request(port, "/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        time.sleep(0.1)
    raise AssertionError("the queue did not drain")


def _start_server(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    args = [sys.executable, str(ROOT / "main.py"), "--port", "0", "--log-level", "INFO",
            "--cache-bytes", str(CACHE_BYTES), "--models-dir", str(tmp_path / "models")]
    for name in ("input", "output", "temp", "data"):
        args += [f"--{name}-dir", str(tmp_path / name)]
    (tmp_path / "models").mkdir()
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    port, _ = _read_until_listening(proc)
    threading.Thread(target=_drain, args=(proc,), daemon=True).start()
    return proc, port


def _settled_rss(pid: int, below: int, timeout: float = 10.0) -> int:
    """RSS once it falls below ``below`` (POST /free runs on the worker), or its last value."""
    deadline = time.monotonic() + timeout
    rss = _rss(pid)
    while rss >= below and time.monotonic() < deadline:
        time.sleep(0.1)
        rss = _rss(pid)
    return rss


@pytest.mark.skipif(not Path("/proc/self/status").exists() or platform.libc_ver()[0] != "glibc",
                    reason="reads RSS from /proc; memory is given back through glibc's malloc_trim")
def test_rss_returns_after_free(tmp_path: Path) -> None:
    proc, port = _start_server(tmp_path)
    try:
        _request(port, "/prompt", {"prompt": _big_output_prompt(64)})  # waits for torch: the server is ready
        _wait_idle(port)
        after_start = _rss(proc.pid)
        for index in range(PROMPTS):
            _request(port, "/prompt", {"prompt": _big_output_prompt(256 + index)})
        _wait_idle(port)
        after_load = _rss(proc.pid)
        _request(port, "/free", {"unload_models": True, "free_memory": True})
        after_free = _settled_rss(proc.pid, after_start + TOLERANCE)
        figures = f"RSS after start {after_start // MB} MB, after load {after_load // MB} MB, " \
                  f"after /free {after_free // MB} MB"
        assert after_load - after_start > TOLERANCE, f"the load did not grow the cache enough: {figures}"
        assert after_free - after_start < TOLERANCE, figures
    finally:
        proc.terminate()
        proc.wait(30)


def test_cache_budget_scales_with_ram_and_never_exceeds_2_gib() -> None:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_cache_bytes() == min(2 * 1024**3, total // 8)
    assert default_cache_bytes(total_ram=4 * 1024**3) == 512 * MB
    assert default_cache_bytes(total_ram=64 * 1024**3) == 2 * 1024**3
    assert Settings().cache_bytes == default_cache_bytes()
    assert Settings(cache_bytes=123).cache_bytes == 123


def test_cache_bytes_option_keeps_its_computed_default_and_override() -> None:
    import main as loom_main

    assert loom_main.settings_from(loom_main.parse_args([])).cache_bytes == default_cache_bytes()
    assert loom_main.settings_from(loom_main.parse_args(["--cache-bytes", "1000"])).cache_bytes == 1000
