"""ComfyUI's conditioning nodes on real tensors: ConditioningAverage's blend (tokens cut or zero-padded to
each entry's length, pooled outputs), and the fields SetAreaPercentage / SetAreaStrength / SetMask /
SetTimestepRange write, resolved the way the sampler reads them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from engine.backend.conditioning import prepare
from engine.cache import OutputCache
from engine.context import RunContext
from engine.executor import Executor
from engine.folders import Folders
from engine.models.manager import ModelManager
from main import build_registry
from nodes.conditioning import (
    ConditioningAverage,
    ConditioningSetArea,
    ConditioningSetAreaPercentage,
    ConditioningSetAreaStrength,
    ConditioningSetMask,
    ConditioningSetTimestepRange,
)
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.test_sd_nodes import run, txt2img

CPU = torch.device("cpu")


def _entry(tokens: int, seed: int, pooled: bool = True) -> list[Any]:
    generator = torch.Generator().manual_seed(seed)
    extras: dict[str, Any] = {"area": (2, 2, 0, 0)}
    if pooled:
        extras["pooled_output"] = torch.randn(1, 6, generator=generator)
    return [torch.randn(1, tokens, 6, generator=generator), extras]


def _blend_reference(to: torch.Tensor, source: torch.Tensor, strength: float) -> torch.Tensor:
    """Token by token, with a missing source token read as zero (written out element-wise)."""
    out = torch.empty_like(to)
    for t in range(to.shape[1]):
        src = source[:, t] if t < source.shape[1] else torch.zeros_like(to[:, t])
        out[:, t] = to[:, t] * strength + src * (1 - strength)
    return out


@pytest.mark.parametrize("from_tokens", [77, 154, 40])
def test_average_blends_tokens_cut_or_padded_to_each_entry(ctx: RunContext, from_tokens: int) -> None:
    to = [_entry(77, 1), _entry(154, 2)]
    source = _entry(from_tokens, 3)
    (out,) = ConditioningAverage().run(ctx, to, [source], 0.3)
    for (cond, extras), (orig, orig_extras) in zip(out, to, strict=True):
        assert cond.shape == orig.shape
        torch.testing.assert_close(cond, _blend_reference(orig, source[0], 0.3), rtol=1e-6, atol=1e-6)
        pooled = orig_extras["pooled_output"] * 0.3 + source[1]["pooled_output"] * 0.7
        torch.testing.assert_close(extras["pooled_output"], pooled)
        assert extras["area"] == (2, 2, 0, 0)  # the other fields are kept
    assert to[0][1]["pooled_output"] is not out[0][1]["pooled_output"]  # the inputs are untouched


def test_average_strength_one_and_zero(ctx: RunContext) -> None:
    to, source = [_entry(77, 4)], _entry(77, 5)
    (keep,) = ConditioningAverage().run(ctx, to, [source], 1.0)
    torch.testing.assert_close(keep[0][0], to[0][0])
    (swap,) = ConditioningAverage().run(ctx, to, [source], 0.0)
    torch.testing.assert_close(swap[0][0], source[0])
    torch.testing.assert_close(swap[0][1]["pooled_output"], source[1]["pooled_output"])


def test_average_pooled_output_when_one_side_lacks_it(ctx: RunContext) -> None:
    with_pooled, without = _entry(77, 6), _entry(77, 7, pooled=False)
    (taken,) = ConditioningAverage().run(ctx, [without], [with_pooled], 0.4)
    torch.testing.assert_close(taken[0][1]["pooled_output"], with_pooled[1]["pooled_output"])  # the source's
    (kept,) = ConditioningAverage().run(ctx, [with_pooled], [without], 0.4)
    assert kept[0][1]["pooled_output"] is with_pooled[1]["pooled_output"]


def test_average_uses_the_first_source_entry_and_warns(ctx: RunContext, caplog: pytest.LogCaptureFixture) -> None:
    to, first, second = [_entry(77, 8)], _entry(77, 9), _entry(77, 10)
    with caplog.at_level(logging.WARNING):
        (out,) = ConditioningAverage().run(ctx, to, [first, second], 0.5)
    torch.testing.assert_close(out[0][0], (to[0][0] + first[0]) / 2)
    assert "only the first" in caplog.text
    with pytest.raises(ValueError, match="conditioning_from"):
        ConditioningAverage().run(ctx, to, [], 0.5)


def test_set_area_percentage_fields_resolve_against_the_latent(ctx: RunContext) -> None:
    cond = [_entry(77, 11)]
    (out,) = ConditioningSetAreaPercentage().run(ctx, cond, width=0.25, height=0.5, x=0.75, y=0.5, strength=0.6)
    extras = out[0][1]
    assert extras["area"] == ("percentage", 0.5, 0.25, 0.5, 0.75)
    assert extras["strength"] == 0.6 and extras["set_area_to_bounds"] is False
    assert cond[0][1]["area"] == (2, 2, 0, 0)  # the input is untouched
    [spec] = prepare(out, (1, 4, 16, 32), device=CPU, dtype=torch.float32)
    assert spec.area == (8, 8, 8, 24) and spec.strength == 0.6  # h, w, y, x in latent pixels
    (tiny,) = ConditioningSetAreaPercentage().run(ctx, cond, width=0.0, height=0.01, x=0.0, y=0.0, strength=1.0)
    assert prepare(tiny, (1, 4, 16, 32), device=CPU, dtype=torch.float32)[0].area == (1, 1, 0, 0)  # at least 1


def test_set_area_strength_keeps_the_area(ctx: RunContext) -> None:
    (area,) = ConditioningSetArea().run(ctx, [_entry(77, 12)], 64, 128, 8, 16, 0.7)
    (out,) = ConditioningSetAreaStrength().run(ctx, area, 2.5)
    assert out[0][1]["strength"] == 2.5 and out[0][1]["area"] == (16, 8, 2, 1)
    assert area[0][1]["strength"] == 0.7


def test_set_mask_fields(ctx: RunContext) -> None:
    mask = torch.zeros(32, 48)
    mask[8:16, 8:24] = 1.0
    (out,) = ConditioningSetMask().run(ctx, [_entry(77, 13)], mask, 0.5, "mask bounds")
    extras = out[0][1]
    assert extras["mask"].shape == (1, 32, 48) and extras["mask_strength"] == 0.5
    assert extras["set_area_to_bounds"] is True
    (default,) = ConditioningSetMask().run(ctx, [_entry(77, 13)], mask[None], 1.0, "default")
    assert default[0][1]["set_area_to_bounds"] is False
    [spec] = prepare(out, (1, 4, 4, 6), device=CPU, dtype=torch.float32)  # the mask at 1/8 of its size
    assert spec.area == (3, 5, 1, 1)  # the box at (1, 1), grown to 8 x 8, then clipped to the latent
    with pytest.raises(ValueError, match="ConditioningSetMask"):
        ConditioningSetMask().run(ctx, [_entry(77, 13)], torch.zeros(1, 1, 4, 4), 1.0, "default")


def test_set_timestep_range_fields(ctx: RunContext) -> None:
    (out,) = ConditioningSetTimestepRange().run(ctx, [_entry(77, 14)], 0.2, 0.7)
    assert out[0][1]["start_percent"] == 0.2 and out[0][1]["end_percent"] == 0.7
    [spec] = prepare(out, (1, 4, 8, 8), device=CPU, dtype=torch.float32,
                     percent_to_sigma=lambda p: {0.2: 5.0, 0.7: 0.5}[p])
    assert (spec.sigma_start, spec.sigma_end) == (5.0, 0.5)
    assert spec.active_at(5.0) and spec.active_at(0.5) and not spec.active_at(5.01) and not spec.active_at(0.49)
    with pytest.raises(ValueError, match="percent_to_sigma"):
        prepare(out, (1, 4, 8, 8), device=CPU, dtype=torch.float32)


# ------------------------------------------------------------------ through the executor and the sampler


@pytest.fixture(scope="module")
def sd_executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    build_checkpoint(root / "checkpoints" / "tiny-sd1.safetensors", "sd1")
    work = tmp_path_factory.mktemp("work")
    folders = Folders(work / "in", work / "out", work / "tmp", (root,))
    folders.ensure()
    return Executor(build_registry(), folders, OutputCache(2**30, 1000), ModelManager("cpu"))


def _sampled(executor: Executor, nodes: dict[str, Any], positive: str) -> torch.Tensor:
    """The KSampler's latent with ``nodes`` added and its positive input linked to ``positive``."""
    prompt = txt2img(steps=4)
    prompt.update(nodes)
    prompt["sample"]["inputs"]["positive"] = [positive, 0]
    latent: torch.Tensor = run(executor, prompt)[2]["latent"]["samples"]
    return latent


def test_the_sampler_honours_mask_area_and_range(sd_executor: Executor) -> None:
    plain = _sampled(sd_executor, {}, "pos")
    ones = {"solid": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 24, "height": 40}},
            "masked": {"class_type": "ConditioningSetMask", "inputs": {
                "conditioning": ["pos", 0], "mask": ["solid", 0], "strength": 1.0, "set_cond_area": "default"}}}
    torch.testing.assert_close(_sampled(sd_executor, ones, "masked"), plain, rtol=1e-5, atol=1e-5)
    whole = {"pct": {"class_type": "ConditioningSetAreaPercentage", "inputs": {
        "conditioning": ["pos", 0], "width": 1.0, "height": 1.0, "x": 0.0, "y": 0.0, "strength": 1.0}}}
    torch.testing.assert_close(_sampled(sd_executor, whole, "pct"), plain, rtol=1e-5, atol=1e-5)

    def ranged(start: float, end: float) -> dict[str, Any]:
        return {"range": {"class_type": "ConditioningSetTimestepRange", "inputs": {
            "conditioning": ["pos", 0], "start": start, "end": end}}}

    torch.testing.assert_close(_sampled(sd_executor, ranged(0.0, 1.0), "range"), plain, rtol=1e-5, atol=1e-5)
    late = _sampled(sd_executor, ranged(0.5, 1.0), "range")
    assert torch.isfinite(late).all() and (late - plain).abs().max() > 1e-3
    half = {"pct": {"class_type": "ConditioningSetAreaPercentage", "inputs": {
                "conditioning": ["neg", 0], "width": 0.5, "height": 1.0, "x": 0.5, "y": 0.0, "strength": 1.0}},
            "both": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["pos", 0],
                                                                     "conditioning_2": ["pct", 0]}}}
    mixed = _sampled(sd_executor, half, "both")
    assert torch.isfinite(mixed).all() and (mixed - plain).abs().max() > 1e-3
