"""The server listens before torch loads (issue 14): ``python main.py`` answers /system_stats and
/object_info while torch, transformers and the backend load on a background thread."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from engine.errors import LoomError
from engine.providers import DeferredModels, NoModels

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
HEAVY_IMPORT = re.compile(r"^import time:.*\|\s*(torch|transformers|safetensors\.torch)\s*$")


def _read_until_listening(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, list[str]]:
    """The bound port, and the stderr lines written before the server said it listens."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the server exited before listening: {''.join(lines[-20:])}")
        found = LISTENING.search(line)
        if found:
            return int(found.group(1)), lines
        lines.append(line)
    raise AssertionError("the server did not listen within 60 s")


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    for _ in proc.stderr:
        pass


def test_server_answers_before_torch_is_imported(tmp_path: Path) -> None:
    args = [sys.executable, "-X", "importtime", str(ROOT / "main.py"), "--port", "0", "--log-level", "INFO"]
    for name in ("input", "output", "temp", "data"):
        args += [f"--{name}-dir", str(tmp_path / name)]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port, before = _read_until_listening(proc)
        threading.Thread(target=_drain, args=(proc,), daemon=True).start()
        heavy = [line.strip() for line in before if HEAVY_IMPORT.match(line)]
        assert heavy == [], f"imported before the server listened: {heavy}"
        assert any(re.match(r"^import time:.*\|\s*aiohttp\s*$", line) for line in before)  # the check sees imports
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=30) as reply:
            stats = json.loads(reply.read())
        assert stats["system"]["python_version"] and stats["devices"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=30) as reply:
            info = json.loads(reply.read())
        assert {"KSampler", "CheckpointLoaderSimple", "SaveImage"} <= set(info)
    finally:
        proc.terminate()
        proc.wait(30)


def test_deferred_models_build_once_in_the_background() -> None:
    built = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    def build() -> NoModels:
        calls.append("build")
        release.wait(10)
        built.set()
        return NoModels()

    models = DeferredModels(build, warm_up=lambda: calls.append("warm"))
    assert models.stats() == {"loading": True}  # never waits, even before start
    models.start()
    models.start()
    assert models.stats() == {"loading": True} and not models.loaded
    models.unload_all()  # nothing to unload yet: returns at once
    release.set()
    assert models.recover_from_oom() == "no models to offload"  # waits for the build
    assert built.is_set() and models.loaded and calls == ["build", "warm"]
    assert models.stats() == {}


def test_deferred_models_report_a_failed_build() -> None:
    def build() -> NoModels:
        raise RuntimeError("no CUDA device 7")

    models = DeferredModels(build)
    with pytest.raises(LoomError, match="no CUDA device 7"):
        models.provider()
    assert models.stats() == {"loading": True} and not models.loaded
