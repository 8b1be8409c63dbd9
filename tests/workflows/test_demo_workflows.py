"""The shipped workflows on the shipped demo models do what their names say, run headless as the README
shows (``python main.py run``), measured with the evaluator's classifier."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from engine.models.lora_formats import parse_lora
from tests.workflows.test_headless import check_outputs
from tools.eval_tiny_addons import border_luma
from tools.eval_tiny_shapes import classify

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DEMO_FILES = ("checkpoints/tiny-shapes.safetensors", "loras/tiny-shapes-dark.safetensors",
              "controlnet/tiny-shapes-edges.safetensors")

pytestmark = pytest.mark.skipif(not all((MODELS / f).is_file() for f in DEMO_FILES),
                                reason="the shipped demo models are missing from models/")


def run_workflow(tmp_path: Path, name: str, *sets: str) -> list[np.ndarray]:
    """Run workflows/NAME.json headless with the example inputs; the images it wrote."""
    shutil.copytree(ROOT / "workflows" / "inputs", tmp_path / "input", dirs_exist_ok=True)  # images and datasets
    args = [sys.executable, str(ROOT / "main.py"), "run", str(ROOT / "workflows" / f"{name}.json")]
    for item in sets:
        args += ["--set", item]
    for folder in ("input", "output", "temp", "data"):
        args += [f"--{folder}-dir", str(tmp_path / folder)]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    if sets:  # the PNGs carry the workflow as run
        paths = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    else:  # the headless contract (test_headless.py): every image carries the saved workflow and its prompt
        paths = check_outputs(ROOT / "workflows" / f"{name}.json", result.stdout)
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def test_txt2img_default_prompt_override_draws_what_it_says(tmp_path: Path) -> None:
    [image] = run_workflow(tmp_path, "txt2img", "Prompt.text=a red circle on a blue background")
    seen = classify(image)
    assert image.shape == (64, 64, 3)
    assert (seen.color, seen.background) == ("red", "blue")


def test_txt2img_default_workflow_uses_the_tiny_model() -> None:
    workflow = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    [loader] = [n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple"]
    assert loader["widgets_values"] == ["tiny-shapes.safetensors"]


def test_batch_writes_four_different_images(tmp_path: Path) -> None:
    images = run_workflow(tmp_path, "batch")
    assert len(images) == 4
    assert len({image.tobytes() for image in images}) == 4
    assert sum(classify(image).color == "yellow" for image in images) >= 3


def test_img2img_keeps_the_layout_and_follows_the_new_colour(tmp_path: Path) -> None:
    source = np.asarray(Image.open(ROOT / "workflows" / "inputs" / "tiny-shapes-red-circle.png").convert("RGB"))
    [image] = run_workflow(tmp_path, "img2img")
    before, after = classify(source), classify(image)
    assert after.background == "blue" and after.color == "yellow"
    assert after.cx is not None and before.cx is not None and after.cy is not None and before.cy is not None
    assert abs(after.cx - before.cx) <= 6 and abs(after.cy - before.cy) <= 6


def test_inpaint_repaints_only_the_transparent_area(tmp_path: Path) -> None:
    rgba = np.asarray(Image.open(ROOT / "workflows" / "inputs" / "tiny-shapes-inpaint.png"))
    [image] = run_workflow(tmp_path, "inpaint")
    kept = rgba[..., 3] == 255
    kept[:, 32:] = False  # a margin: the VAE decoder mixes neighbouring pixels
    difference = np.abs(image.astype(np.float32) - rgba[..., :3].astype(np.float32))[kept]
    assert difference.mean() < 12
    repainted = image[:, 44:].astype(np.float32)
    original = rgba[:, 44:, :3].astype(np.float32)
    assert np.abs(repainted - original).max() > 60  # something new was painted in the masked area


def test_lora_darkens_the_background_as_its_strength_grows(tmp_path: Path) -> None:
    lumas = []
    for strength in (0.0, 0.5, 1.0):
        [image] = run_workflow(tmp_path / str(strength), "lora", f"10.strength_model={strength}",
                               f"10.strength_clip={strength}")
        lumas.append(border_luma(image))
    assert lumas[0] > lumas[1] > lumas[2]
    assert lumas[0] - lumas[2] > 60  # white background -> dark grey


def test_controlnet_puts_the_shape_where_the_edge_map_draws_it(tmp_path: Path) -> None:
    edges = np.asarray(Image.open(ROOT / "workflows" / "inputs" / "tiny-shapes-edges.png").convert("L")) > 127
    ys, xs = np.nonzero(edges)
    [image] = run_workflow(tmp_path, "controlnet")
    seen = classify(image)
    assert seen.cx is not None and seen.cy is not None
    assert np.hypot(seen.cx - xs.mean(), seen.cy - ys.mean()) <= 6
    assert seen.color == "green"


def test_hires_fix_doubles_the_size_and_keeps_the_prompt(tmp_path: Path) -> None:
    [image] = run_workflow(tmp_path, "hires-fix")
    assert image.shape == (128, 128, 3)
    seen = classify(image)
    assert seen.background == "green"


def test_merge_with_the_lora_model_is_the_lora_at_the_merged_strength(tmp_path: Path) -> None:
    """workflows/merge.json: ModelMergeSimple and CLIPMergeSimple at 0.25 of the demo model and 0.75 of the demo
    model with the dark LoRA at 1.0. Merging is linear in the weights, so this is the LoRA at strength 0.75."""
    [merged] = run_workflow(tmp_path / "merge", "merge")
    [lora] = run_workflow(tmp_path / "lora", "lora", "10.strength_model=0.75", "10.strength_clip=0.75")
    difference = np.abs(merged.astype(np.int16) - lora.astype(np.int16))
    assert difference.mean() < 0.5 and difference.max() <= 4  # float rounding only
    [plain] = run_workflow(tmp_path / "plain", "merge", "12.ratio=1.0", "11.ratio=1.0")
    assert border_luma(plain) - border_luma(merged) > 15  # ratio 1 is the plain model: a lighter background


def test_train_lora_saves_a_lora_the_loader_reads_and_plots_its_loss(tmp_path: Path) -> None:
    images = run_workflow(tmp_path, "train-lora")
    assert sorted(image.shape for image in images) == [(64, 64, 3), (480, 800, 3)]  # the sample and the loss graph
    [saved] = (tmp_path / "output").glob("tiny-shapes-rings-lora_8_steps_*_.safetensors")
    lora = parse_lora(load_file(saved))
    assert not lora.unused and len(lora.adapters) > 50
    assert {adapter["weight"].kind for adapter in lora.adapters.values()} == {"LoRA"}
