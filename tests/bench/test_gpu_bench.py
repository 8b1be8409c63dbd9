"""Smoke runs of bench/gpu.py (the benchmark itself is never part of the tests): ``--smoke`` runs every phase's code
on the CPU with tiny models, each phase in its own process as on a GPU; without CUDA the plain run reports that it
measured nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "gpu.py"
VRAM_MODES = ("high", "normal", "low", "none")


def run_bench(*argv: str) -> dict[str, Any]:
    """bench/gpu.py's JSON. One OpenMP thread: on a shared 2-core machine each op of a tiny model otherwise waits a
    scheduler tick for the second thread, which makes a seconds-long run of a sub-second one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH), *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def assert_timing(entry: dict[str, Any]) -> None:
    assert positive(entry["median_s"]) and positive(entry["min_s"])
    assert len(entry["times_s"]) == 1  # --smoke: one repeat


def assert_comparison(entry: dict[str, Any]) -> None:
    """Loom and diffusers timed, and on the same weights in fp32 their outputs agree (the name tables are right)."""
    assert_timing(entry["ours"])
    assert_timing(entry["diffusers"])
    assert positive(entry["ratio_ours_over_diffusers"]) and positive(entry["speedup_over_diffusers"])
    assert 0.0 <= entry["relative_error"] < 1e-4


@pytest.mark.slow  # about 30 s (five fresh interpreters); run with -m slow when bench/gpu.py changes
def test_smoke_unet_steps_and_vae_decodes(tmp_path: Path) -> None:
    result = run_bench("--smoke", "--only", "unet,vae", "--workdir", str(tmp_path))
    assert (result["benchmark"], result["smoke"], result["cuda"]) == ("gpu", True, False)
    assert result["dtypes"] == {"unet": "float32", "vae": "float32"}  # the ModelManager's choice on the CPU
    assert result["phase_groups"] == ["unet", "vae"]
    phases = result["phases"]
    assert set(phases) == {"unet_sd15_64", "unet_sdxl_64", "vae"}
    for name, model in (("unet_sd15_64", "sd15"), ("unet_sdxl_64", "sdxl")):
        step = phases[name]
        assert (step["model"], step["size"], step["batch"], step["dtype"]) == (model, 64, 2, "float32")
        assert_comparison(step)
        assert positive(step["phase_peak_bytes"]) and positive(step["phase_wall_s"])
    assert phases["unet_sdxl_64"]["weights_shared_with_diffusers"] is True
    assert set(phases["vae"]["sizes"]) == {"64", "128"}
    for decode in phases["vae"]["sizes"].values():
        assert_comparison(decode)
        assert positive(decode["peak_bytes"])
    summary = result["summary"]
    assert set(summary["s_per_it"]) == {"sd15_64", "sdxl_64"} and all(map(positive, summary["s_per_it"].values()))
    assert set(summary["ratio_ours_over_diffusers"]) == {"unet_step_sd15_64", "unet_step_sdxl_64",
                                                         "vae_decode_64", "vae_decode_128"}
    assert summary["peak_gib_by_vram_mode"] == {}  # not asked for


@pytest.mark.slow  # about 30 s; the four modes' paths are also covered by tests/models/test_memory.py
def test_smoke_vram_modes(tmp_path: Path) -> None:
    result = run_bench("--smoke", "--only", "vram", "--skip-diffusers", "--workdir", str(tmp_path))
    phases = result["phases"]
    assert set(phases) == {f"vram_{mode}" for mode in VRAM_MODES}
    means: set[float] = set()
    for mode in VRAM_MODES:
        run = phases[f"vram_{mode}"]
        assert run["mode"] == mode and run["memory_source"] == "VmHWM"
        for key in ("peak_bytes_incl_placing", "step_peak_bytes", "unet_bytes", "s_per_step", "output_abs_mean"):
            assert positive(run[key]), (mode, key, run[key])
        assert run["streamed"] is (mode in ("low", "none"))
        assert run["resident"] is (mode in ("high", "normal"))
        means.add(round(run["output_abs_mean"], 4))
    assert len(means) == 1  # every mode computes the same step
    summary = result["summary"]
    assert set(summary["peak_gib_by_vram_mode"]) == set(VRAM_MODES)
    assert all(map(positive, summary["s_per_step_by_vram_mode"].values()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_without_cuda_the_plain_run_says_so(tmp_path: Path) -> None:
    result = run_bench("--workdir", str(tmp_path))
    assert result["benchmark"] == "gpu" and result["cuda"] is False
    assert "is_available" in result["reason"] and "phases" not in result
    assert not list(tmp_path.iterdir())  # no checkpoint built for nothing


def test_unknown_phase_group_is_refused() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--only", "unet,gpus"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and "unknown phase group" in done.stderr
