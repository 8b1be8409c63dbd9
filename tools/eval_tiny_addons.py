"""Measure the tiny ControlNet and LoRA through Loom's real path (the same executor and nodes as
``python main.py run``), on held-out prompts.

ControlNet: each sample is a shape drawn anywhere in the frame (not on the caption grid); the prompt
names colour, shape and background but no position; the hint is the shape's outline
(:func:`tools.tiny_shapes_data.edge_map`) through ``ControlNetApplyAdvanced``. Reported: the distance
in pixels between the generated shape's centroid and the drawn shape's centroid, with the ControlNet
and without it (strength 0), and how often colour and shape still match the prompt.

LoRA: canonical held-out prompts through ``LoraLoader`` at several strengths. Reported per strength:
the mean brightness (0..255, Rec. 601 luma) of the image border (the background) and how often the
foreground colour still matches the prompt.

    python -m tools.eval_tiny_addons --count 24 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.eval_tiny_shapes import classify, run_prompts, txt2img_prompt
from tools.tiny_shapes_data import ShapeSpec, caption, edge_map, eval_specs, render, sample_free_spec

log = logging.getLogger("tools.eval_tiny_addons")

CHECKPOINT = "tiny-shapes.safetensors"
CONTROLNET = "tiny-shapes-edges.safetensors"
LORA = "tiny-shapes-dark.safetensors"
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def controlnet_prompt(text: str, hint_name: str, *, seed: int, strength: float, ckpt: str = CHECKPOINT,
                      controlnet: str = CONTROLNET, steps: int = 20, cfg: float = 8.0,
                      canny: bool = False) -> dict[str, Any]:
    """txt2img steered by the image ``hint_name``: an edge map, or (``canny``) a picture whose edges the
    ``Canny`` node finds first (ComfyUI's default thresholds 0.4 / 0.8)."""
    prompt = txt2img_prompt(ckpt, text, seed=seed, steps=steps, cfg=cfg, sampler="euler", scheduler="normal")
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": hint_name}}
    if canny:
        prompt["13"] = {"class_type": "Canny", "inputs": {"image": ["10", 0], "low_threshold": 0.4,
                                                          "high_threshold": 0.8}}
    prompt["11"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}}
    prompt["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "control_net": ["11", 0], "image": ["13" if canny else "10", 0],
        "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
    prompt["5"]["inputs"].update(positive=["12", 0], negative=["12", 1])
    return prompt


def lora_prompt(text: str, *, seed: int, strength: float, ckpt: str = CHECKPOINT, lora: str = LORA,
                steps: int = 20, cfg: float = 8.0) -> dict[str, Any]:
    prompt = txt2img_prompt(ckpt, text, seed=seed, steps=steps, cfg=cfg, sampler="euler", scheduler="normal")
    prompt["10"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "strength_model": strength,
        "strength_clip": strength}}
    prompt["2"]["inputs"]["clip"] = ["10", 1]
    prompt["3"]["inputs"]["clip"] = ["10", 1]
    prompt["5"]["inputs"]["model"] = ["10", 0]
    return prompt


def controlnet_specs(count: int, seed: int) -> list[ShapeSpec]:
    """Held-out shapes placed anywhere: a stream the ControlNet's training never drew from."""
    rng = np.random.default_rng([seed, 1001])
    return [sample_free_spec(rng) for _ in range(count)]


def centroid_distance(image: np.ndarray, spec: ShapeSpec) -> float | None:
    """Pixels between the generated shape's centroid and the drawn shape's (None: no shape found)."""
    seen, truth = classify(image), classify(render(spec))
    if seen.cx is None or seen.cy is None or truth.cx is None or truth.cy is None:
        return None
    return float(np.hypot(seen.cx - truth.cx, seen.cy - truth.cy))


def evaluate_controlnet(count: int, seed: int, models_dirs: Sequence[Path], strength: float = 1.0,
                        within: float = 6.0, canny: bool = False) -> dict[str, Any]:
    """With ``canny`` the hint is a rendering of another shape at the same place (a white shape on black)
    that the ``Canny`` node turns into edges, instead of the outline itself."""
    specs = controlnet_specs(count, seed)
    texts = [caption(spec, 0, with_position=False) for spec in specs]
    if canny:
        hints = {f"hint-{i}.png": render(dataclasses.replace(spec, color="white", background="black"))
                 for i, spec in enumerate(specs)}
    else:
        hints = {f"hint-{i}.png": edge_map(spec) for i, spec in enumerate(specs)}
    report: dict[str, Any] = {"count": count, "within_px": within, "hint": "canny" if canny else "edge_map"}
    for label, value in (("controlnet", strength), ("without", 0.0)):
        prompts = [controlnet_prompt(text, f"hint-{i}.png", seed=seed * 1000 + i, strength=value, canny=canny)
                   for i, text in enumerate(texts)]
        images = run_prompts(prompts, models_dirs=models_dirs, inputs=hints)
        distances = [centroid_distance(image, spec) for image, spec in zip(images, specs, strict=True)]
        found = [d for d in distances if d is not None]
        seen = [classify(image) for image in images]
        report[label] = {
            "strength": value,
            "median_distance_px": round(float(np.median(found)), 2) if found else None,
            "mean_distance_px": round(float(np.mean(found)), 2) if found else None,
            "within_pct": round(100.0 * sum(d is not None and d <= within for d in distances) / count, 1),
            "color_pct": round(100.0 * sum(s.color == spec.color for s, spec in zip(seen, specs, strict=True))
                               / count, 1),
            "shape_pct": round(100.0 * sum(s.shape == spec.shape for s, spec in zip(seen, specs, strict=True))
                               / count, 1),
        }
    return report


def border_luma(image: np.ndarray) -> float:
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return float((border @ LUMA).mean())


def evaluate_lora(count: int, seed: int, models_dirs: Sequence[Path],
                  strengths: Sequence[float] = (0.0, 0.5, 1.0)) -> dict[str, Any]:
    specs = eval_specs(count, seed)
    texts = [caption(spec, 0) for spec in specs]
    report: dict[str, Any] = {"count": count, "strengths": {}}
    for strength in strengths:
        prompts = [lora_prompt(text, seed=seed * 1000 + i, strength=strength) for i, text in enumerate(texts)]
        images = run_prompts(prompts, models_dirs=models_dirs)
        seen = [classify(image) for image in images]
        report["strengths"][str(strength)] = {
            "background_luma": round(float(np.mean([border_luma(image) for image in images])), 1),
            "color_pct": round(100.0 * sum(s.color == spec.color for s, spec in zip(seen, specs, strict=True))
                               / count, 1),
        }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, action="append", default=None)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("controlnet", "lora"), default=None)
    parser.add_argument("--canny", action="store_true", help="ControlNet hints through the Canny node")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    models_dirs = args.models_dir or [Path(__file__).resolve().parents[1] / "models"]
    report: dict[str, Any] = {}
    if args.only in (None, "controlnet"):
        report["controlnet"] = evaluate_controlnet(args.count, args.seed, models_dirs, canny=args.canny)
    if args.only in (None, "lora"):
        report["lora"] = evaluate_lora(args.count, args.seed, models_dirs)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
