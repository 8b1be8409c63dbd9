"""Smoke run of bench/flow_models.py (the benchmark itself is never part of the tests): tiny MMDiT, Flux and VAE
configurations at 64x64, two steps; the driver with its fresh processes for SD3.5, the Flux and VAE phases in
this process."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "flow_models.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_flow_models", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _phase(bench: ModuleType, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert bench.main(["--tiny", "--size", "64", *argv]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_tiny_sd35_run_through_fresh_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _phase(_bench(), capsys, "--only", "sd35", "--skip-vae", "--workdir", str(tmp_path))
    run = result["phases"]["sd35"]
    assert result["phases"]["make"]["sd35"]["bytes_by_dtype"].keys() == {"float16"}
    assert run["family"] == "SD3.5" and run["passes_per_step"] == 2 and run["output_finite"]
    assert len(run["step_times_s"]) == 2 and run["s_per_step"] > 0
    assert run["rss_after_load_gib"] > 0 and run["vmhwm_gib"] >= run["rss_after_load_gib"]
    assert run["weights"]["gib_by_dtype"].keys() == {"float32"}  # fp16 file, computed in fp32 on the CPU
    assert "other_jobs_share" in run["contention"] and result["summary"]["sd35"]["s_per_step"] == run["s_per_step"]
    assert not list(tmp_path.glob("*.safetensors"))  # deleted without --keep


def test_tiny_flux_keeps_float8_weights_and_streams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    made = _phase(bench, capsys, "--phase", "make", "--models", "flux", "--workdir", str(tmp_path))
    assert made["flux"]["reused"] is False and set(made["flux"]["bytes_by_dtype"]) == {"float8_e4m3fn", "bfloat16"}
    again = _phase(bench, capsys, "--phase", "make", "--models", "flux", "--workdir", str(tmp_path))
    assert again["flux"]["reused"] is True  # same header and size: not written again
    run = _phase(bench, capsys, "--phase", "run", "--model", "flux", "--vram", "low", "--workdir", str(tmp_path))
    assert run["family"] == "Flux.1 dev" and run["passes_per_step"] == 1 and run["guidance"] == 3.5
    assert run["streamed"] and run["output_finite"] and len(run["step_times_s"]) == 2
    stored = run["weights"]["bytes_by_dtype"]
    assert stored["float8_e4m3fn"] > 10 * stored["float32"] > 0  # Linear weights float8, biases and norms fp32
    assert run["float8_cast"]["float8_elements"] == stored["float8_e4m3fn"]
    assert run["loaded"][0]["dtype"] == "float8_e4m3fn"


def test_tiny_vae_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _phase(_bench(), capsys, "--phase", "vae", "--workdir", str(tmp_path))
    assert result["latent_shape"] == [1, 16, 8, 8] and len(result["decode_s"]) == 2


def test_too_little_disk_stops_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench()

    class Usage:
        free = 1024

    monkeypatch.setattr(bench.shutil, "disk_usage", lambda _path: Usage())
    with pytest.raises(SystemExit, match="not enough free disk"):
        bench.main(["--tiny", "--phase", "make", "--models", "sd35,flux", "--workdir", str(tmp_path)])
    assert not list(tmp_path.iterdir())
