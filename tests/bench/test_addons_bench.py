"""Smoke run of bench/addons.py (the benchmark itself is never part of the tests): every case on tiny
configurations; the JSON names each case with positive timings and, where both sides compute the same thing,
outputs that agree. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "addons.py"
CASES = ["t2i_adapter", "clip_vision", "hypernetwork", "gligen", "x4_upscaler", "taesd_preview"]
COMPARED = {"t2i_adapter", "clip_vision", "x4_upscaler", "taesd_preview"}  # the others: the plain UNet call


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_addons", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_times_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench().main(["--quick"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bench"] == "addons" and result["quick"] and result["device"] == "cpu"
    assert result["threads"] >= 1 and result["torch"]
    entries = result["cases"]
    assert [e["case"] for e in entries] == ["t2i_adapter"] * 3 + CASES[1:]  # full, light and SDXL adapters
    for entry in entries:
        assert {"case", "config", "loom_s", "reference", "reference_s", "ratio"} <= set(entry)
        assert entry["config"] and entry["reference"]
        assert entry["loom_s"] >= 0 and entry["reference_s"] >= 0 and entry["ratio"] > 0
        if entry["case"] in COMPARED:  # the same work on both sides: the same outputs
            assert entry["finite"] and entry["max_abs_diff"] >= 0 and entry["rel_diff"] < 1e-4
        else:  # the add-on ran: the prediction changed
            assert entry["output_change_rel"] > 0
    gligen = next(e for e in entries if e["case"] == "gligen")
    assert gligen["uncond_row_unchanged"] and gligen["fusers"] == 7
    taesd = next(e for e in entries if e["case"] == "taesd_preview")
    assert taesd["taesd_preview_jpeg_s"] >= 0 and taesd["latent2rgb_preview_ms"] >= 0


def test_cases_are_chosen_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    cases, options = bench.parse_args(["--cases", "taesd_preview, gligen", "--repeats", "3"])
    assert cases == ["taesd_preview", "gligen"] and options.repeats == 3 and not options.quick
    assert bench.parse_args([])[0] == CASES
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "taesd_preview,nope"])
    assert "unknown case(s) nope" in capsys.readouterr().err
