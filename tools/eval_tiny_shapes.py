"""Evaluate the tiny-shapes demo model through Loom's real path and measure prompt following.

For ``--count`` held-out prompts (combinations of shape, colour, background and position never seen
in training, see :data:`tools.tiny_shapes_data.HELD_OUT`) it runs an API-format workflow
(CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode ->
SaveImage) through the :class:`~engine.executor.Executor` with the built-in node registry and a
:class:`~engine.models.manager.ModelManager`, exactly as ``python main.py run`` does, and reads the
saved PNGs back. Each image is then measured with :func:`classify`, a small geometric classifier:

* background: the median colour of the image border;
* foreground: the largest connected region of pixels far from the background colour, refined to the
  pixels nearer the foreground colour than the background colour;
* colour: the palette colour nearest the median of the first region's interior pixels;
* shape: the nearest prototype in (bounding-box fill ratio, top-half / bottom-half mass, corner
  occupancy) space: circle (pi/4, 1, 0.15), square (1, 1, 1), upright triangle (1/2, 1/3, 3/8);
* position: the 3x3 cell holding the region's centroid.

Prints JSON with the percentages of correct colour, shape and position (and background), and writes
a grid PNG of the samples with their prompts (green/red marks per attribute).

    python -m tools.eval_tiny_shapes --models-dir models --count 48 --seed 0 --grid output/tiny-shapes-eval.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from tools.tiny_shapes_data import PALETTE, ShapeSpec, canonical_caption, eval_specs, position_cell

log = logging.getLogger("tools.eval_tiny_shapes")

#: A pixel belongs to the foreground when it is this far (RGB euclidean) from the background colour:
#: about half the distance between the two closest palette colours.
FOREGROUND_DISTANCE = 45.0
MIN_AREA = 6
CORNER_FRACTION = 0.2
#: (fill ratio, top/bottom mass ratio, corner occupancy) of each ideal shape.
SHAPE_PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "circle": (np.pi / 4, 1.0, 0.15),
    "square": (1.0, 1.0, 1.0),
    "triangle": (0.5, 1.0 / 3.0, 0.375),
}
_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[name] for name in _PALETTE_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Classification:
    """What :func:`classify` saw in one image (None where no foreground was found)."""

    background: str
    color: str | None
    shape: str | None
    position: str | None
    area: int
    fill: float
    top_bottom: float
    corners: float
    cx: float | None = None  # centroid of the foreground region, pixels
    cy: float | None = None


def nearest_color(rgb: np.ndarray) -> str:
    """The palette colour nearest ``rgb`` (RGB euclidean)."""
    return _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE_RGB - rgb, axis=1)))]


def _largest_region(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == int(np.argmax(sizes)) + 1


def shape_features(region: np.ndarray) -> tuple[float, float, float]:
    """(fill ratio of the bounding box, top-half / bottom-half mass, mean occupancy of the 4 corners)."""
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = region[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].astype(np.float32)
    height, width = box.shape
    fill = float(box.mean())
    top = float(box[: height // 2].sum())
    bottom = float(box[(height + 1) // 2:].sum())
    top_bottom = top / bottom if bottom > 0 else 1.0
    k_h = max(1, round(CORNER_FRACTION * height))
    k_w = max(1, round(CORNER_FRACTION * width))
    corners = [box[:k_h, :k_w], box[:k_h, -k_w:], box[-k_h:, :k_w], box[-k_h:, -k_w:]]
    return fill, min(top_bottom, 2.0), float(np.mean([c.mean() for c in corners]))


def classify_shape(features: tuple[float, float, float]) -> str:
    """The shape whose prototype is nearest ``features``."""
    point = np.array(features)
    distances = {name: float(np.linalg.norm(point - np.array(proto))) for name, proto in SHAPE_PROTOTYPES.items()}
    return min(distances, key=distances.__getitem__)


def classify(image: np.ndarray) -> Classification:
    """Measure background, foreground colour, shape and position of a uint8 ``[H, W, 3]`` image.

    The foreground is found in two passes: pixels far from the background colour give a first region
    and its colour; the final region is then every pixel nearer the foreground colour than the
    background colour (the 50% coverage contour, so soft or low-contrast edges neither shrink nor
    grow the shape), of which the largest connected part is kept.
    """
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    height, width = pixels.shape[:2]
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background_rgb = np.median(border, axis=0)
    background = nearest_color(background_rgb)
    region = _largest_region(np.linalg.norm(pixels - background_rgb, axis=-1) > FOREGROUND_DISTANCE)
    if region.sum() < MIN_AREA:
        return Classification(background, None, None, None, int(region.sum()), 0.0, 0.0, 0.0)
    interior = ndimage.binary_erosion(region)
    foreground_rgb = np.median(pixels[interior] if interior.sum() >= MIN_AREA else pixels[region], axis=0)
    axis = foreground_rgb - background_rgb
    coverage = (pixels - background_rgb) @ axis / max(float(axis @ axis), 1e-6)
    region = _largest_region(coverage > 0.5)
    area = int(region.sum())
    if area < MIN_AREA:
        return Classification(background, None, None, None, area, 0.0, 0.0, 0.0)
    features = shape_features(region)
    ys, xs = np.nonzero(region)
    cx, cy = float(xs.mean() + 0.5), float(ys.mean() + 0.5)
    position = position_cell(cx * 64 / width, cy * 64 / height)
    return Classification(background, nearest_color(foreground_rgb), classify_shape(features), position, area,
                          *features, cx=cx, cy=cy)


def score(spec: ShapeSpec, seen: Classification) -> dict[str, bool]:
    return {
        "color": seen.color == spec.color,
        "shape": seen.shape == spec.shape,
        "position": seen.position == spec.position,
        "background": seen.background == spec.background,
    }


# --------------------------------------------------------------------------------------------- generation


def txt2img_prompt(ckpt_name: str, text: str, *, seed: int, steps: int, cfg: float, sampler: str, scheduler: str,
                   negative: str = "", size: int = 64, prefix: str = "tiny-shapes-eval") -> dict[str, Any]:
    """An API-format text-to-image workflow (the same nodes as ComfyUI's default graph)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def generate(texts: Sequence[str], seeds: Sequence[int], *, models_dirs: Sequence[Path], ckpt_name: str,
             steps: int, cfg: float, sampler: str, scheduler: str, device: str = "auto") -> list[np.ndarray]:
    """Run one txt2img workflow per prompt through Loom's executor; the images as uint8 arrays."""
    prompts = [txt2img_prompt(ckpt_name, text, seed=seed, steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler)
               for text, seed in zip(texts, seeds, strict=True)]
    return run_prompts(prompts, models_dirs=models_dirs, device=device)


def run_prompts(prompts: Sequence[dict[str, Any]], *, models_dirs: Sequence[Path], device: str = "auto",
                inputs: dict[str, np.ndarray] | None = None, save_node: str = "7") -> list[np.ndarray]:
    """Run API-format prompts through Loom's executor (one model manager and cache for all of them, as
    a server would); ``inputs`` are written to the input folder first. The images that ``save_node``
    saved, as uint8 arrays, in order."""
    from engine.cache import OutputCache
    from engine.events import ListSink
    from engine.executor import Executor
    from engine.folders import Folders
    from engine.models.manager import ModelManager, pick_device
    from main import build_registry

    images: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="tiny-shapes-eval-") as tmp:
        root = Path(tmp)
        folders = Folders(root / "input", root / "output", root / "temp", tuple(models_dirs))
        folders.ensure()
        for name, pixels in (inputs or {}).items():
            Image.fromarray(pixels).save(root / "input" / name)
        executor = Executor(build_registry(), folders, OutputCache(256 * 1024**2, 1000),
                            ModelManager(pick_device(device)))
        for index, prompt in enumerate(prompts):
            sink = ListSink()
            outcome = executor.execute(prompt, uuid.uuid4().hex, sink)
            if outcome.status_str != "success":
                message = outcome.error.message if outcome.error else sink.types()
                raise RuntimeError(f"prompt {index} failed: {message}")
            for saved in outcome.outputs[save_node]["images"]:
                path = folders.file_path(saved["type"], saved["filename"], saved["subfolder"])
                with Image.open(path) as picture:
                    images.append(np.asarray(picture.convert("RGB")))
            log.info("%d/%d done", index + 1, len(prompts))
    return images


# --------------------------------------------------------------------------------------------- report


def write_grid(images: Sequence[np.ndarray], captions: Sequence[str], marks: Sequence[dict[str, bool]], path: Path,
               *, columns: int = 6, scale: int = 3) -> None:
    """A PNG grid: each sample enlarged ``scale`` times, its prompt below, one mark per attribute."""
    font = ImageFont.load_default()
    tile = images[0].shape[0] * scale
    cell_w, cell_h = max(tile, 200), tile + 46
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (image, text, mark) in enumerate(zip(images, captions, marks, strict=True)):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        big = Image.fromarray(image).resize((tile, tile), Image.Resampling.NEAREST)
        sheet.paste(big, (x + (cell_w - tile) // 2, y + 2))
        words = text.split(", ", 1)
        for line, part in enumerate(words):
            draw.text((x + 4, y + tile + 4 + 12 * line), part, fill=(0, 0, 0), font=font)
        status = " ".join(f"{key[0].upper()}{'+' if ok else '-'}" for key, ok in mark.items() if key != "background")
        colour = (0, 140, 0) if all(mark[k] for k in ("color", "shape", "position")) else (200, 0, 0)
        draw.text((x + 4, y + tile + 30), status, fill=colour, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    specs = eval_specs(args.count, args.seed)
    texts = [canonical_caption(spec) for spec in specs]
    seeds = [args.seed * 1000 + i for i in range(len(specs))]
    models_dirs = args.models_dir or [Path(__file__).resolve().parents[1] / "models"]
    images = generate(texts, seeds, models_dirs=models_dirs, ckpt_name=args.ckpt, steps=args.steps, cfg=args.cfg,
                      sampler=args.sampler, scheduler=args.scheduler, device=args.device)
    seen = [classify(image) for image in images]
    marks = [score(spec, s) for spec, s in zip(specs, seen, strict=True)]
    report: dict[str, Any] = {
        key: round(100.0 * sum(m[key] for m in marks) / len(marks), 1)
        for key in ("color", "shape", "position", "background")
    }
    report.update(count=len(specs), seed=args.seed, ckpt=args.ckpt, steps=args.steps, cfg=args.cfg,
                  sampler=args.sampler, scheduler=args.scheduler)
    if args.grid:
        write_grid(images, texts, marks, args.grid, columns=min(6, len(images)))
        report["grid"] = str(args.grid)
    if args.details:
        report["samples"] = [{"prompt": t, "seed": s, "truth": spec.to_dict(), "seen": asdict(c), "correct": m}
                             for t, s, spec, c, m in zip(texts, seeds, specs, seen, marks, strict=True)]
    return report


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, action="append", default=None,
                        help="model root holding checkpoints/ (default: the repository's models/)")
    parser.add_argument("--ckpt", default="tiny-shapes.safetensors", help="checkpoint name in checkpoints/")
    parser.add_argument("--count", type=int, default=48, help="number of held-out prompts")
    parser.add_argument("--seed", type=int, default=0, help="picks the prompts and the sampling seeds")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=8.0, help="ComfyUI's default")
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--scheduler", default="normal")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--grid", type=Path, default=Path("output/tiny-shapes-eval.png"),
                        help="where to write the grid of samples ('' for none)")
    parser.add_argument("--details", action="store_true", help="include every sample in the JSON")
    args = parser.parse_args(argv)
    if args.grid is not None and str(args.grid) in ("", "."):
        args.grid = None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = evaluate(args)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
