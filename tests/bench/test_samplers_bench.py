"""Smoke run of bench/samplers.py (the benchmark itself is never part of the tests): a tiny UNet, two
samplers, two steps; the JSON it prints names each sampler with its evaluation count."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "samplers.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_samplers", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_counts_model_evaluations(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench().main(["--quick", "--cpu", "--samplers", "euler,heun", "--steps", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    table = result["samplers"]
    assert list(table) == ["euler", "heun"] and result["steps"] == 2
    assert table["euler"]["model_evals"] == 2  # one per step
    assert table["heun"]["model_evals"] == 3  # two on the first step, one (Euler) on the step to sigma 0
    assert all(row["finite"] and not row["capped"] and row["seconds_per_step"] > 0 for row in table.values())


def test_unknown_sampler_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown nope"):
        _bench().sampler_names("euler,nope")
