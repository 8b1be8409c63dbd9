"""The shipped demo models follow prompts, edge maps and LoRA strength: tools/eval_tiny_shapes.py and
tools/eval_tiny_addons.py on a smaller held-out sample than the closing-note numbers (48 prompts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools.eval_tiny_addons import evaluate_controlnet, evaluate_lora
from tools.eval_tiny_shapes import classify, generate, score
from tools.tiny_shapes_data import canonical_caption, eval_specs

MODELS = Path(__file__).resolve().parents[2] / "models"
CHECKPOINT = MODELS / "checkpoints" / "tiny-shapes.safetensors"

pytestmark = pytest.mark.skipif(not CHECKPOINT.is_file(), reason="the shipped demo checkpoint is missing")


def test_demo_model_follows_colour_shape_and_position() -> None:
    specs = eval_specs(24, seed=1)
    images = generate([canonical_caption(spec) for spec in specs], [1000 + i for i in range(len(specs))],
                      models_dirs=[MODELS], ckpt_name=CHECKPOINT.name, steps=20, cfg=8.0, sampler="euler",
                      scheduler="normal", device="cpu")
    marks = [score(spec, classify(image)) for spec, image in zip(specs, images, strict=True)]
    rate = {key: float(np.mean([m[key] for m in marks])) for key in ("color", "shape", "position", "background")}
    assert rate["color"] >= 0.9, rate
    assert rate["background"] >= 0.9, rate
    assert rate["shape"] >= 0.7, rate
    assert rate["position"] >= 0.7, rate


@pytest.mark.skipif(not (MODELS / "controlnet" / "tiny-shapes-edges.safetensors").is_file(),
                    reason="the shipped demo ControlNet is missing")
def test_demo_controlnet_moves_the_shape_to_the_edge_map() -> None:
    report = evaluate_controlnet(8, seed=1, models_dirs=[MODELS])
    with_net, without = report["controlnet"], report["without"]
    assert with_net["median_distance_px"] <= 4.0, report
    assert with_net["within_pct"] >= 75.0, report
    assert without["median_distance_px"] > 2 * with_net["median_distance_px"], report


@pytest.mark.skipif(not (MODELS / "controlnet" / "tiny-shapes-edges.safetensors").is_file(),
                    reason="the shipped demo ControlNet is missing")
def test_demo_controlnet_follows_canny_edges_of_a_picture() -> None:
    report = evaluate_controlnet(6, seed=2, models_dirs=[MODELS], canny=True)
    assert report["hint"] == "canny"
    assert report["controlnet"]["median_distance_px"] <= 4.0, report


@pytest.mark.skipif(not (MODELS / "loras" / "tiny-shapes-dark.safetensors").is_file(),
                    reason="the shipped demo LoRA is missing")
def test_demo_lora_effect_grows_with_strength() -> None:
    report = evaluate_lora(6, seed=1, models_dirs=[MODELS], strengths=(0.0, 0.5, 1.0))
    luma = [report["strengths"][key]["background_luma"] for key in ("0.0", "0.5", "1.0")]
    assert luma[0] > luma[1] > luma[2], report
    assert luma[0] - luma[2] > 40, report
    assert report["strengths"]["1.0"]["color_pct"] >= 60.0, report  # dark shapes on darkened backgrounds blur
