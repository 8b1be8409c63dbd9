"""Tiny Shapes: a procedural, seeded, captioned dataset of 64x64 RGB images for the demo model.

Each image is one flat-coloured shape (circle, square or upright triangle) of one of eight palette
colours on a flat background of another palette colour, at one of nine positions (a 3x3 grid of
cells) and one of two sizes. Shapes are drawn at 4x resolution with PIL and box-filtered down, so
edges are antialiased. A :class:`ShapeSpec` holds the exact parameters (the evaluator's ground
truth); :func:`caption` turns it into text such as "a red circle on a blue background, top left,
small" with a few phrasings, optionally leaving out the position, the size or the background.

Everything is a pure function of its seed (``numpy.random.Generator``). :data:`HELD_OUT` is a fixed
set of (shape, colour, background, position) combinations that never appear in training
(:func:`sample_spec` skips them); :func:`eval_specs` draws the evaluation prompts from it, so the
evaluator's prompts are never seen verbatim, nor as images, during training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "HELD_OUT",
    "PALETTE",
    "POSITIONS",
    "RESOLUTION",
    "SHAPES",
    "SIZES",
    "Combo",
    "ShapeSpec",
    "canonical_caption",
    "caption",
    "edge_map",
    "eval_specs",
    "held_out_combos",
    "make_dataset",
    "position_cell",
    "random_caption",
    "render",
    "render_batch",
    "sample_free_spec",
    "sample_spec",
]

RESOLUTION = 64
SUPERSAMPLE = 4

#: Foreground and background colours (sRGB). The closest pair (yellow/orange) is ~90 apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 50, 190),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = tuple(PALETTE)
#: Background colours: the whole palette; a background never equals the foreground.
BACKGROUNDS: tuple[str, ...] = tuple(PALETTE)
#: Position name -> (column, row) in the 3x3 grid.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
#: Size name -> possible radii in pixels (at 64x64); the shape's bounding box is 2r x 2r.
SIZES: dict[str, tuple[int, ...]] = {"small": (6, 7, 8), "large": (11, 12, 13)}
#: Cell centres along an axis (pixels); a shape is jittered by up to JITTER and kept inside the frame.
CELL_CENTERS: tuple[int, int, int] = (12, 32, 52)
JITTER = 2

#: (shape, colour, background, position)
Combo = tuple[str, str, str, str]
HELD_OUT_SEED = 4_2024
HELD_OUT_COUNT = 64


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one image: what is drawn, where, and how big (the ground truth)."""

    shape: str
    color: str
    background: str
    position: str
    size: str
    cx: int  # centre of the bounding box, pixels
    cy: int
    radius: int  # half the bounding box side, pixels

    @property
    def combo(self) -> Combo:
        return (self.shape, self.color, self.background, self.position)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def position_cell(x: float, y: float, resolution: int = RESOLUTION) -> str:
    """The position name of the 3x3 cell holding the point ``(x, y)``."""
    col = min(max(int(x * 3 // resolution), 0), 2)
    row = min(max(int(y * 3 // resolution), 0), 2)
    return next(name for name, cell in POSITIONS.items() if cell == (col, row))


# --------------------------------------------------------------------------------------------- split


def _all_combos() -> list[Combo]:
    return [(s, c, b, p) for s in SHAPES for c in COLORS for b in BACKGROUNDS if b != c for p in POSITIONS]


def held_out_combos(count: int = HELD_OUT_COUNT, seed: int = HELD_OUT_SEED) -> tuple[Combo, ...]:
    """A fixed, seeded set of combinations never shown in training (the evaluator's prompts)."""
    combos = _all_combos()
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(combos), size=count, replace=False)
    return tuple(combos[i] for i in sorted(picked))


HELD_OUT: frozenset[Combo] = frozenset(held_out_combos())


# --------------------------------------------------------------------------------------------- sampling


def _place(position: str, radius: int, rng: np.random.Generator) -> tuple[int, int]:
    col, row = POSITIONS[position]
    centre = []
    for cell in (col, row):
        value = CELL_CENTERS[cell] + int(rng.integers(-JITTER, JITTER + 1))
        centre.append(min(max(value, radius + 1), RESOLUTION - 1 - radius))
    return centre[0], centre[1]


def spec_for(combo: Combo, size: str, rng: np.random.Generator) -> ShapeSpec:
    """A spec of the given combination and size with seeded radius and position jitter."""
    shape, color, background, position = combo
    if background == color:
        raise ValueError(f"background equals the foreground colour ({color})")
    radius = int(rng.choice(SIZES[size]))
    cx, cy = _place(position, radius, rng)
    return ShapeSpec(shape, color, background, position, size, cx, cy, radius)


def sample_spec(rng: np.random.Generator, exclude: Iterable[Combo] | frozenset[Combo] = HELD_OUT) -> ShapeSpec:
    """A uniformly random training spec whose combination is not in ``exclude``."""
    excluded = exclude if isinstance(exclude, frozenset) else frozenset(exclude)
    while True:
        color = COLORS[int(rng.integers(len(COLORS)))]
        backgrounds = [b for b in BACKGROUNDS if b != color]
        combo = (
            SHAPES[int(rng.integers(len(SHAPES)))],
            color,
            backgrounds[int(rng.integers(len(backgrounds)))],
            tuple(POSITIONS)[int(rng.integers(len(POSITIONS)))],
        )
        size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
        if combo not in excluded:
            return spec_for(combo, size, rng)


def sample_free_spec(rng: np.random.Generator) -> ShapeSpec:
    """A random spec whose centre is anywhere in the frame (not on the 3x3 grid): ControlNet training.

    ``position`` is the name of the cell holding the centre.
    """
    base = sample_spec(rng, exclude=frozenset())
    radius = int(rng.choice(SIZES[base.size]))
    cx, cy = (int(rng.integers(radius + 1, RESOLUTION - radius)) for _ in range(2))
    return dataclasses.replace(base, cx=cx, cy=cy, radius=radius, position=position_cell(cx, cy))


def eval_specs(count: int = 48, seed: int = 0) -> list[ShapeSpec]:
    """``count`` held-out specs: every held-out combination once (seeded order), then again, with seeded sizes."""
    rng = np.random.default_rng(seed)
    combos = sorted(HELD_OUT)
    specs: list[ShapeSpec] = []
    while len(specs) < count:
        for index in rng.permutation(len(combos))[: count - len(specs)]:
            size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
            specs.append(spec_for(combos[int(index)], size, rng))
    return specs


# --------------------------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(
    spec: ShapeSpec,
    template: int = 0,
    *,
    with_position: bool = True,
    with_size: bool = True,
    with_background: bool = True,
) -> str:
    """The caption of ``spec`` in phrasing ``template`` (0..3), optionally leaving parts out.

    0: "a red circle on a blue background, top left, small" (the canonical form)
    1: "a small red circle on a blue background, top left"
    2: "red circle, blue background, top left, small"
    3: "a small red circle, top left, on a blue background"
    """
    thing = f"{spec.color} {spec.shape}"
    sized = f"{spec.size} {thing}" if with_size else thing
    background = f"{_article(spec.background)} {spec.background} background"
    if template == 0:
        parts = [f"{_article(thing)} {thing}" + (f" on {background}" if with_background else "")]
        parts += [spec.position] if with_position else []
        parts += [spec.size] if with_size else []
    elif template == 1:
        parts = [f"{_article(sized)} {sized}" + (f" on {background}" if with_background else "")]
        parts += [spec.position] if with_position else []
    elif template == 2:
        parts = [thing] + ([f"{spec.background} background"] if with_background else [])
        parts += [spec.position] if with_position else []
        parts += [spec.size] if with_size else []
    elif template == 3:
        parts = [f"{_article(sized)} {sized}"] + ([spec.position] if with_position else [])
        parts += [f"on {background}"] if with_background else []
    else:
        raise ValueError(f"template must be 0..3, not {template}")
    return ", ".join(parts)


def canonical_caption(spec: ShapeSpec) -> str:
    """The full caption in the canonical phrasing (what the evaluator prompts with)."""
    return caption(spec, 0)


def random_caption(
    spec: ShapeSpec,
    rng: np.random.Generator,
    *,
    drop_position: float = 0.15,
    drop_size: float = 0.15,
    drop_background: float = 0.1,
) -> str:
    """A training caption: a random phrasing, each optional part left out with its probability."""
    return caption(
        spec,
        int(rng.integers(4)),
        with_position=bool(rng.random() >= drop_position),
        with_size=bool(rng.random() >= drop_size),
        with_background=bool(rng.random() >= drop_background),
    )


# --------------------------------------------------------------------------------------------- drawing


def _draw_shape(draw: ImageDraw.ImageDraw, spec: ShapeSpec, scale: float, fill: Any) -> None:
    left, top = (spec.cx - spec.radius) * scale, (spec.cy - spec.radius) * scale
    right, bottom = (spec.cx + spec.radius) * scale - 1, (spec.cy + spec.radius) * scale - 1
    if spec.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif spec.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif spec.shape == "triangle":
        draw.polygon(((spec.cx * scale - 0.5, top), (right, bottom), (left, bottom)), fill=fill)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {SHAPES}")


def render(spec: ShapeSpec, resolution: int = RESOLUTION, supersample: int = SUPERSAMPLE, *,
           background_rgb: tuple[int, int, int] | None = None) -> np.ndarray:
    """The image of ``spec`` as uint8 ``[resolution, resolution, 3]``, antialiased by supersampling.

    Coordinates are in 64-pixel units and scaled to ``resolution``. The triangle is upright: apex at
    the top centre of the bounding box, base along its bottom edge. ``background_rgb`` overrides the
    background's palette colour (the dark-background LoRA's training images).
    """
    scale = resolution / RESOLUTION * supersample
    big = resolution * supersample
    image = Image.new("RGB", (big, big), background_rgb or PALETTE[spec.background])
    _draw_shape(ImageDraw.Draw(image), spec, scale, PALETTE[spec.color])
    small = image.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def edge_map(spec: ShapeSpec, resolution: int = RESOLUTION, width: float = 1.5) -> np.ndarray:
    """The shape's outline, white on black, uint8 ``[resolution, resolution, 3]``: the ControlNet hint.

    The outline is the shape's supersampled mask minus its erosion by ``width`` pixels, box-filtered
    down and thresholded at half, so it looks like a clean Canny edge map or a hand-drawn scribble.
    """
    scale = resolution / RESOLUTION * SUPERSAMPLE
    big = resolution * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(mask), spec, scale, 255)
    size = 2 * round(width * SUPERSAMPLE / 2) + 1
    inner = mask.filter(ImageFilter.MinFilter(size))
    ring = np.asarray(mask, dtype=np.float32) - np.asarray(inner, dtype=np.float32)
    small = Image.fromarray(ring.clip(0, 255).astype(np.uint8)).resize((resolution, resolution), Image.Resampling.BOX)
    edges = np.where(np.asarray(small) >= 64, 255, 0).astype(np.uint8)
    return np.repeat(edges[..., None], 3, axis=2)


def render_batch(specs: Sequence[ShapeSpec], resolution: int = RESOLUTION) -> np.ndarray:
    """Images of ``specs`` as uint8 ``[N, resolution, resolution, 3]``."""
    out = np.empty((len(specs), resolution, resolution, 3), dtype=np.uint8)
    for i, spec in enumerate(specs):
        out[i] = render(spec, resolution)
    return out


def make_dataset(count: int, seed: int) -> tuple[np.ndarray, list[ShapeSpec]]:
    """``count`` training images (uint8 ``[N, 64, 64, 3]``) and their specs, none held out."""
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng) for _ in range(count)]
    return render_batch(specs), specs
