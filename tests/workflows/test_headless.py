"""Every saved workflow runs headless through ``python main.py run``, the way the README says."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.pngmeta import read_png_metadata

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
#: Workflows the demo tests (test_demo_workflows.py, test_upscale_workflow.py) already run headless, with the same
#: PNG metadata check (run_workflow): here they run only with -m slow, to keep the default suite short.
RUN_BY_DEMO_TESTS = frozenset({"txt2img", "batch", "img2img", "inpaint", "lora", "controlnet", "hires-fix", "merge",
                               "upscale", "train-lora", "sd3-txt2img"})


def _case(workflow: Path) -> object:
    marks = [pytest.mark.slow] if workflow.stem in RUN_BY_DEMO_TESTS else []
    return pytest.param(workflow, id=workflow.stem, marks=marks)


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python main.py run`` with fresh folders; the input folder holds the example inputs, as the README says."""
    shutil.copytree(ROOT / "workflows" / "inputs", tmp_path / "input", dirs_exist_ok=True)  # images and datasets
    dirs = []
    for name in ("input", "output", "temp", "data"):
        dirs += [f"--{name}-dir", str(tmp_path / name)]
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "run", *args, *dirs],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def check_outputs(workflow: Path, stdout: str) -> list[Path]:
    """The images ``main.py run`` printed: every one exists and carries the workflow and its prompt."""
    outputs = [Path(line) for line in stdout.splitlines() if line.strip()]
    assert outputs and all(p.is_file() for p in outputs)
    for path in outputs:
        meta = read_png_metadata(path.read_bytes())
        assert meta["workflow"] == json.loads(workflow.read_text())
        assert set(meta["prompt"]) <= {str(n["id"]) for n in meta["workflow"]["nodes"]}
    return outputs


@pytest.mark.parametrize("workflow", [_case(w) for w in WORKFLOWS])
def test_workflow_runs_headless(tmp_path: Path, workflow: Path) -> None:
    result = _run(tmp_path, str(workflow))
    assert result.returncode == 0, result.stderr
    check_outputs(workflow, result.stdout)


def test_every_workflow_is_run_headless_by_some_default_test() -> None:
    demo_tests = "".join((ROOT / "tests" / "workflows" / name).read_text()
                         for name in ("test_demo_workflows.py", "test_upscale_workflow.py", "test_sd3_demo.py"))
    for stem in RUN_BY_DEMO_TESTS:
        assert f'"{stem}"' in demo_tests, f"{stem}.json is run by no demo test: take it out of RUN_BY_DEMO_TESTS"


def test_set_override_by_title_and_png_round_trip(tmp_path: Path) -> None:
    result = _run(tmp_path, str(ROOT / "workflows" / "invert-image.json"), "--set", "Save.filename_prefix=custom",
                  "--set", "1.color=0")
    assert result.returncode == 0, result.stderr
    [path] = [Path(line) for line in result.stdout.splitlines()]
    assert path.name == "custom_00001_.png"
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (64, 128, 3) and (pixels == 255).all()  # black inverted, scaled by 0.5
    # The PNG carries its workflow, so it can be run again directly.
    again = _run(tmp_path, str(path), "--set", "Save.filename_prefix=again")
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip()).name == "again_00001_.png"


def test_bad_workflow_exits_non_zero_with_readable_error(tmp_path: Path) -> None:
    result = _run(tmp_path, str(ROOT / "workflows" / "invert-image.json"), "--set", "3.scale_by=100")
    assert result.returncode == 2
    assert "node 3 (ImageScaleBy)" in result.stderr and "maximum" in result.stderr
    result = _run(tmp_path, str(ROOT / "workflows" / "invert-image.json"), "--set", "Nope.x=1")
    assert result.returncode == 2 and "matches no node id or title" in result.stderr
