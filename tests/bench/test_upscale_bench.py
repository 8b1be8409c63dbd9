"""Smoke run of bench/upscale.py (the benchmark itself is never part of the tests): a tiny RRDBNet on 64x64."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "upscale.py"


def test_quick_run_times_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_upscale", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["output"] == [256, 256] and result["tiles"] == 1
    assert result["loom_tiled_s"] > 0 and result["spandrel_tile_s"] > 0
    # the seconds are rounded to milliseconds, the ratio is not
    assert result["overhead"] == pytest.approx(result["loom_tiled_s"] / result["spandrel_tile_s"], rel=0.2)
