"""The procedural Tiny Shapes dataset: seeded, complete, antialiased, with a held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from tools.tiny_shapes_data import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeSpec,
    canonical_caption,
    caption,
    eval_specs,
    held_out_combos,
    make_dataset,
    position_cell,
    random_caption,
    render,
    sample_spec,
)


def test_dataset_is_reproducible_from_its_seed() -> None:
    images, specs = make_dataset(24, seed=7)
    again_images, again_specs = make_dataset(24, seed=7)
    other_images, other_specs = make_dataset(24, seed=8)
    assert specs == again_specs and np.array_equal(images, again_images)
    assert specs != other_specs and not np.array_equal(images, other_images)
    assert images.shape == (24, 64, 64, 3) and images.dtype == np.uint8


def test_every_value_occurs_and_background_never_equals_foreground() -> None:
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng) for _ in range(3000)]
    assert all(spec.background != spec.color for spec in specs)
    assert {s.shape for s in specs} == set(SHAPES)
    assert {s.color for s in specs} == set(COLORS)
    assert {s.background for s in specs} == set(BACKGROUNDS)
    assert {s.position for s in specs} == set(POSITIONS)
    assert {s.size for s in specs} == set(SIZES)


def test_held_out_combinations_never_appear_in_training() -> None:
    rng = np.random.default_rng(1)
    seen = {sample_spec(rng).combo for _ in range(20000)}
    assert not seen & HELD_OUT
    assert len(HELD_OUT) == 64 and held_out_combos() == held_out_combos()
    assert all(background != color for _, color, background, _ in HELD_OUT)


def test_eval_specs_are_held_out_seeded_and_distinct() -> None:
    specs = eval_specs(48, seed=0)
    assert len(specs) == 48 and all(spec.combo in HELD_OUT for spec in specs)
    assert len({spec.combo for spec in specs}) == 48
    assert eval_specs(48, seed=0) == specs and eval_specs(48, seed=1) != specs
    assert len(eval_specs(100, seed=0)) == 100  # more than the held-out set: combinations repeat


@pytest.mark.parametrize("shape", SHAPES)
def test_render_is_antialiased_and_inside_the_frame(shape: str) -> None:
    spec = ShapeSpec(shape, "red", "blue", "top left", "large", cx=14, cy=14, radius=13)
    image = render(spec).astype(int)
    foreground, background = np.array(PALETTE["red"]), np.array(PALETTE["blue"])
    is_fg = (image == foreground).all(-1)
    is_bg = (image == background).all(-1)
    edge = ~is_fg & ~is_bg
    assert (image[0] == background).all() and (image[-1] == background).all()
    assert (image[:, 0] == background).all() and (image[:, -1] == background).all()
    assert is_fg.sum() > 100
    if shape == "square":
        assert edge.sum() == 0 and is_fg.sum() == 26 * 26  # an axis-aligned square on whole pixels is crisp
    else:
        assert edge.sum() > 10  # blended edge pixels: drawn at 4x and box-filtered down
    # The blends lie between the two colours.
    lo, hi = np.minimum(foreground, background), np.maximum(foreground, background)
    assert ((image[edge] >= lo - 1) & (image[edge] <= hi + 1)).all()


def test_shapes_stay_inside_the_frame_at_every_position() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        spec = sample_spec(rng, exclude=frozenset())
        assert spec.radius + 1 <= spec.cx <= 63 - spec.radius and spec.radius + 1 <= spec.cy <= 63 - spec.radius
        assert spec.radius in SIZES[spec.size]
        assert position_cell(spec.cx, spec.cy) == spec.position


def test_canonical_caption_and_phrasings() -> None:
    spec = ShapeSpec("circle", "red", "blue", "top left", "small", 12, 12, 7)
    assert canonical_caption(spec) == "a red circle on a blue background, top left, small"
    assert caption(spec, 1) == "a small red circle on a blue background, top left"
    assert caption(spec, 2) == "red circle, blue background, top left, small"
    assert caption(spec, 3) == "a small red circle, top left, on a blue background"
    assert caption(spec, 0, with_position=False, with_size=False) == "a red circle on a blue background"
    assert caption(spec, 0, with_background=False) == "a red circle, top left, small"
    orange = ShapeSpec("square", "orange", "orange", "center", "large", 32, 32, 12)
    assert canonical_caption(orange).startswith("an orange square on an orange background")
    with pytest.raises(ValueError):
        caption(spec, 4)


def test_random_captions_vary_but_always_name_colour_and_shape() -> None:
    rng = np.random.default_rng(3)
    spec = ShapeSpec("triangle", "green", "white", "bottom right", "large", 52, 50, 12)
    captions = {random_caption(spec, rng) for _ in range(300)}
    assert len(captions) > 10
    assert all("green triangle" in text for text in captions)
    assert any("bottom right" not in text for text in captions)  # the position is sometimes left out
    assert any("white background" not in text for text in captions)
