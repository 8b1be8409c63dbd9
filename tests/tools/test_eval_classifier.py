"""The evaluator's geometric classifier is exact on clean dataset images and robust to mild damage.

This is what makes the evaluation of generated images meaningful: every image of the dataset, drawn
from the ground-truth parameters, must be read back as exactly those parameters.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tools.eval_tiny_shapes import (
    SHAPE_PROTOTYPES,
    classify,
    classify_shape,
    score,
    shape_features,
    write_grid,
)
from tools.tiny_shapes_data import SHAPES, SIZES, ShapeSpec, eval_specs, render, render_batch, sample_spec


def _accuracy(specs: list[ShapeSpec], images: np.ndarray) -> tuple[dict[str, float], list[str]]:
    hits: Counter[str] = Counter()
    failures = []
    for spec, image in zip(specs, images, strict=True):
        marks = score(spec, classify(image))
        hits.update(key for key, ok in marks.items() if ok)
        if not all(marks.values()):
            failures.append(f"{spec} -> {classify(image)}")
    return {key: hits[key] / len(specs) for key in ("color", "shape", "position", "background")}, failures


@pytest.fixture(scope="module")
def clean() -> tuple[list[ShapeSpec], np.ndarray]:
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng, exclude=frozenset()) for _ in range(800)] + eval_specs(64, seed=0)
    return specs, render_batch(specs)


def test_classifier_is_exact_on_clean_images(clean: tuple[list[ShapeSpec], np.ndarray]) -> None:
    accuracy, failures = _accuracy(*clean)
    assert accuracy == {"color": 1.0, "shape": 1.0, "position": 1.0, "background": 1.0}, failures[:5]


def test_classifier_survives_noise_and_blur(clean: tuple[list[ShapeSpec], np.ndarray]) -> None:
    specs, images = clean
    rng = np.random.default_rng(1)
    blurred = ndimage.uniform_filter(images.astype(np.float32), size=(1, 3, 3, 1))
    noisy = np.clip(blurred + rng.normal(0, 8, images.shape), 0, 255).astype(np.uint8)
    accuracy, failures = _accuracy(specs, noisy)
    assert min(accuracy.values()) >= 0.97, (accuracy, failures[:5])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", list(SIZES))
def test_shape_features_lie_nearest_their_prototype(shape: str, size: str) -> None:
    radius = SIZES[size][0]
    spec = ShapeSpec(shape, "white", "black", "center", size, 32, 32, radius)
    region = (render(spec).astype(int) - 15).sum(-1) > 3 * 115
    features = shape_features(region)
    assert classify_shape(features) == shape
    assert np.linalg.norm(np.array(features) - np.array(SHAPE_PROTOTYPES[shape])) < 0.2


def test_wrong_answers_are_scored_wrong() -> None:
    spec = ShapeSpec("square", "yellow", "purple", "bottom", "large", 32, 50, 12)
    other = ShapeSpec("circle", "orange", "green", "top right", "small", 52, 12, 7)
    marks = score(spec, classify(render(other)))
    assert marks == {"color": False, "shape": False, "position": False, "background": False}


def test_blank_image_has_no_foreground() -> None:
    seen = classify(np.full((64, 64, 3), 30, dtype=np.uint8))
    assert seen.shape is None and seen.color is None and seen.position is None and seen.area == 0
    spec = ShapeSpec("circle", "red", "black", "center", "small", 32, 32, 7)
    assert not any(value for key, value in score(spec, seen).items() if key != "background")


def test_largest_region_wins_over_speckles() -> None:
    spec = ShapeSpec("triangle", "blue", "white", "left", "large", 13, 32, 12)
    image = render(spec).copy()
    image[5, 50] = image[60, 60] = (220, 30, 30)  # isolated red pixels
    seen = classify(image)
    assert (seen.color, seen.shape, seen.position) == ("blue", "triangle", "left")


def test_grid_is_written(tmp_path: Path) -> None:
    specs = eval_specs(5, seed=0)
    images = render_batch(specs)
    marks = [score(spec, classify(image)) for spec, image in zip(specs, images, strict=True)]
    path = tmp_path / "grid" / "eval.png"
    write_grid(list(images), ["a caption, with parts"] * 5, marks, path, columns=3)
    with Image.open(path) as grid:
        assert grid.size[0] >= 3 * 64 * 3 and grid.size[1] >= 2 * 64 * 3
