"""Latent nodes, checked numerically; inputs are never mutated."""

from __future__ import annotations

import math

import pytest
import torch

from engine.context import RunContext
from nodes.latent_ops import (
    EmptyLatentImage,
    LatentAdd,
    LatentBatch,
    LatentComposite,
    LatentFromBatch,
    LatentMultiply,
    LatentUpscale,
    LatentUpscaleBy,
    RepeatLatentBatch,
)

METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


def _latent(batch: int = 1, height: int = 8, width: int = 8, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn((batch, 4, height, width), generator=gen)}


def _constant(batch: int = 1, height: int = 8, width: int = 8) -> dict:
    vector = torch.tensor([1.0, -2.0, 0.5, 3.0]).reshape(1, 4, 1, 1)
    return {"samples": vector.expand(batch, 4, height, width).clone()}


# --- EmptyLatentImage -----------------------------------------------------------------------


def test_empty_latent_shape_and_zeros(ctx: RunContext) -> None:
    (latent,) = EmptyLatentImage().run(ctx, width=768, height=512, batch_size=3)
    assert latent["samples"].shape == (3, 4, 64, 96)
    assert latent["samples"].dtype == torch.float32
    assert torch.count_nonzero(latent["samples"]) == 0
    (odd,) = EmptyLatentImage().run(ctx, width=520, height=16, batch_size=1)
    assert odd["samples"].shape == (1, 4, 2, 65)


def test_empty_latent_channels_are_a_class_setting(ctx: RunContext) -> None:
    class Empty16(EmptyLatentImage):
        latent_channels = 16

    (latent,) = Empty16().run(ctx, width=64, height=64, batch_size=1)
    assert latent["samples"].shape == (1, 16, 8, 8)


# --- LatentUpscale / LatentUpscaleBy --------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_latent_upscale_sizes(ctx: RunContext, method: str) -> None:
    latent = _latent(batch=2)
    (out,) = LatentUpscale().run(ctx, samples=latent, upscale_method=method, width=128, height=96,
                                 crop="disabled")
    assert out["samples"].shape == (2, 4, 12, 16)
    assert out["samples"].dtype == torch.float32


@pytest.mark.parametrize("method", METHODS)
def test_latent_upscale_constant_stays_constant(ctx: RunContext, method: str) -> None:
    latent = _constant(height=8, width=8)
    (out,) = LatentUpscale().run(ctx, samples=latent, upscale_method=method, width=200, height=72,
                                 crop="center")
    expected = latent["samples"][:, :, :1, :1].expand(1, 4, 9, 25)
    torch.testing.assert_close(out["samples"], expected)


def test_latent_upscale_zero_keeps_aspect_and_minimum(ctx: RunContext) -> None:
    latent = _latent(height=8, width=16)  # 128 x 64 pixels
    node = LatentUpscale()
    (out,) = node.run(ctx, samples=latent, upscale_method="bilinear", width=256, height=0, crop="disabled")
    assert out["samples"].shape == (1, 4, 16, 32)
    (out,) = node.run(ctx, samples=latent, upscale_method="bilinear", width=0, height=128, crop="disabled")
    assert out["samples"].shape == (1, 4, 16, 32)
    (out,) = node.run(ctx, samples=latent, upscale_method="bilinear", width=16, height=16, crop="disabled")
    assert out["samples"].shape == (1, 4, 8, 8)  # never below 64 pixels
    (out,) = node.run(ctx, samples=latent, upscale_method="bilinear", width=0, height=16, crop="disabled")
    assert out["samples"].shape == (1, 4, 8, 16)
    (out,) = node.run(ctx, samples=latent, upscale_method="bilinear", width=0, height=0, crop="disabled")
    assert out["samples"] is latent["samples"] and out is not latent


@pytest.mark.parametrize("axis", ["width", "height"])
def test_bislerp_interpolates_on_the_sphere(ctx: RunContext, axis: str) -> None:
    samples = torch.zeros((1, 4, 1, 2))
    samples[0, 0, 0, 0] = 2.0  # first pixel: 2 * e0
    samples[0, 1, 0, 1] = 4.0  # second pixel: 4 * e1
    if axis == "height":
        samples = samples.transpose(2, 3).contiguous()
    (out,) = LatentUpscaleBy().run(ctx, samples={"samples": samples}, upscale_method="bislerp", scale_by=1.5)
    result = out["samples"] if axis == "width" else out["samples"].transpose(2, 3)
    assert result.shape == (1, 4, 2, 3)
    # Halfway: direction (e0 + e1) / sqrt(2), length (2 + 4) / 2. A linear blend gives (1, 2).
    expected = torch.tensor([3.0 / math.sqrt(2.0), 3.0 / math.sqrt(2.0), 0.0, 0.0])
    torch.testing.assert_close(result[0, :, 0, 1], expected)
    torch.testing.assert_close(result[0, :, 0, 0], torch.tensor([2.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(result[0, :, 0, 2], torch.tensor([0.0, 4.0, 0.0, 0.0]))
    torch.testing.assert_close(result[0, :, 1], result[0, :, 0])


def test_bislerp_matches_bilinear_for_parallel_vectors(ctx: RunContext) -> None:
    direction = torch.tensor([1.0, 2.0, -1.0, 0.5]).reshape(1, 4, 1, 1)
    scale = torch.rand((1, 1, 5, 6), generator=torch.Generator().manual_seed(3)) + 0.5
    latent = {"samples": direction * scale}
    (slerped,) = LatentUpscale().run(ctx, samples=latent, upscale_method="bislerp", width=88, height=64,
                                     crop="disabled")
    (linear,) = LatentUpscale().run(ctx, samples=latent, upscale_method="bilinear", width=88, height=64,
                                    crop="disabled")
    torch.testing.assert_close(slerped["samples"], linear["samples"])


def test_latent_upscale_by_sizes_and_keys(ctx: RunContext) -> None:
    mask = torch.ones((1, 64, 64))
    latent = {**_latent(height=8, width=12), "noise_mask": mask, "batch_index": [3]}
    (out,) = LatentUpscaleBy().run(ctx, samples=latent, upscale_method="nearest-exact", scale_by=1.5)
    assert out["samples"].shape == (1, 4, 12, 18)
    assert out["noise_mask"] is mask and out["batch_index"] == [3]
    assert latent["samples"].shape == (1, 4, 8, 12)


# --- LatentComposite ------------------------------------------------------------------------


def test_latent_composite_places_at_latent_coordinates(ctx: RunContext) -> None:
    to = {"samples": torch.zeros((1, 4, 16, 16))}
    source = {"samples": torch.arange(64, dtype=torch.float32).reshape(1, 4, 4, 4) + 1.0}
    (out,) = LatentComposite().run(ctx, samples_to=to, samples_from=source, x=16, y=24, feather=0)
    result = out["samples"]
    torch.testing.assert_close(result[:, :, 3:7, 2:6], source["samples"])
    assert result.sum() == source["samples"].sum()  # nothing outside the region
    assert torch.count_nonzero(to["samples"]) == 0  # input untouched


def test_latent_composite_repeats_a_shorter_source_batch(ctx: RunContext) -> None:
    to = {"samples": torch.zeros((3, 4, 8, 8))}
    source = {"samples": torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1).expand(2, 4, 2, 2)}
    (out,) = LatentComposite().run(ctx, samples_to=to, samples_from=source, x=8, y=8, feather=0)
    assert out["samples"][:, 0, 1, 1].tolist() == [1.0, 2.0, 1.0]
    assert out["samples"][:, 0, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_latent_composite_clips_at_the_border(ctx: RunContext) -> None:
    to = {"samples": torch.zeros((1, 4, 8, 8))}
    source = {"samples": torch.ones((1, 4, 4, 4))}
    (out,) = LatentComposite().run(ctx, samples_to=to, samples_from=source, x=48, y=56, feather=0)
    assert out["samples"].shape == (1, 4, 8, 8)
    assert out["samples"][0, 0].sum() == 2.0  # 1 row x 2 columns fit
    assert out["samples"][0, 0, 7, 6:].tolist() == [1.0, 1.0]


def test_latent_composite_feather_ramps_inner_edges(ctx: RunContext) -> None:
    to = {"samples": torch.zeros((1, 4, 12, 12))}
    source = {"samples": torch.ones((1, 4, 4, 4))}
    (out,) = LatentComposite().run(ctx, samples_to=to, samples_from=source, x=32, y=32, feather=16)
    region = out["samples"][0, 0, 4:8, 4:8]
    ramp = torch.tensor([0.5, 1.0, 1.0, 0.5])
    torch.testing.assert_close(region, ramp[:, None] * ramp[None, :])
    # At the destination border there is nothing to blend into: no ramp on that side.
    (corner,) = LatentComposite().run(ctx, samples_to=to, samples_from=source, x=0, y=0, feather=16)
    edge = torch.tensor([1.0, 1.0, 1.0, 0.5])
    torch.testing.assert_close(corner["samples"][0, 0, :4, :4], edge[:, None] * edge[None, :])


# --- LatentBatch / LatentFromBatch / RepeatLatentBatch --------------------------------------


def test_latent_batch_concatenates_and_resizes(ctx: RunContext) -> None:
    first = _latent(batch=2, height=8, width=8, seed=1)
    second = _constant(batch=1, height=4, width=6)
    (out,) = LatentBatch().run(ctx, samples1=first, samples2=second)
    assert out["samples"].shape == (3, 4, 8, 8)
    assert torch.equal(out["samples"][:2], first["samples"])
    torch.testing.assert_close(out["samples"][2:], _constant(1, 8, 8)["samples"])
    assert out["batch_index"] == [0, 1, 0]  # ComfyUI: indices concatenated as they are
    assert "batch_index" not in first and "noise_mask" not in out


def test_latent_batch_keeps_indices_and_joins_noise_masks(ctx: RunContext) -> None:
    first = {**_latent(batch=2), "batch_index": [4, 5], "noise_mask": torch.full((1, 1, 8, 8), 0.5)}
    second = {**_latent(batch=1), "batch_index": [9]}
    (out,) = LatentBatch().run(ctx, samples1=first, samples2=second)
    assert out["batch_index"] == [4, 5, 9]
    mask = out["noise_mask"]
    assert mask.shape == (3, 1, 8, 8)
    assert torch.all(mask[:2] == 0.5) and torch.all(mask[2] == 1.0)


def test_latent_from_batch_indices(ctx: RunContext) -> None:
    latent = _latent(batch=4)
    (out,) = LatentFromBatch().run(ctx, samples=latent, batch_index=1, length=2)
    assert torch.equal(out["samples"], latent["samples"][1:3])
    assert out["batch_index"] == [1, 2]
    (last,) = LatentFromBatch().run(ctx, samples=latent, batch_index=10, length=5)
    assert torch.equal(last["samples"], latent["samples"][3:4]) and last["batch_index"] == [3]
    indexed = {**latent, "batch_index": [5, 6, 7, 8]}
    (out,) = LatentFromBatch().run(ctx, samples=indexed, batch_index=2, length=3)
    assert out["batch_index"] == [7, 8]
    assert "batch_index" not in latent


def test_latent_from_batch_noise_mask(ctx: RunContext) -> None:
    masks = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 1, 8, 8)
    latent = {**_latent(batch=4), "noise_mask": masks}
    (out,) = LatentFromBatch().run(ctx, samples=latent, batch_index=2, length=2)
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [2.0, 3.0]
    single = {**_latent(batch=4), "noise_mask": torch.ones((1, 1, 8, 8))}
    (out,) = LatentFromBatch().run(ctx, samples=single, batch_index=2, length=2)
    assert out["noise_mask"].shape == (1, 1, 8, 8)


def test_repeat_latent_batch(ctx: RunContext) -> None:
    latent = _latent(batch=2)
    (out,) = RepeatLatentBatch().run(ctx, samples=latent, amount=3)
    assert out["samples"].shape == (6, 4, 8, 8)
    assert torch.equal(out["samples"][4:], latent["samples"])
    assert "batch_index" not in out
    indexed = {**latent, "batch_index": [2, 3]}
    (out,) = RepeatLatentBatch().run(ctx, samples=indexed, amount=3)
    assert out["batch_index"] == [2, 3, 4, 5, 6, 7]
    (out,) = RepeatLatentBatch().run(ctx, samples={**latent, "batch_index": [0, 4]}, amount=2)
    assert out["batch_index"] == [0, 4, 5, 9]
    assert indexed["batch_index"] == [2, 3]


def test_repeat_latent_batch_repeats_batched_masks(ctx: RunContext) -> None:
    masks = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1).expand(2, 1, 8, 8)
    latent = {**_latent(batch=2), "noise_mask": masks}
    (out,) = RepeatLatentBatch().run(ctx, samples=latent, amount=2)
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0]


# --- LatentAdd / LatentMultiply -------------------------------------------------------------


def test_latent_add(ctx: RunContext) -> None:
    a, b = _latent(batch=2, seed=1), _latent(batch=2, seed=2)
    (out,) = LatentAdd().run(ctx, samples1=a, samples2=b)
    torch.testing.assert_close(out["samples"], a["samples"] + b["samples"])
    (broadcast,) = LatentAdd().run(ctx, samples1=a, samples2=_constant(batch=1, height=4, width=4))
    torch.testing.assert_close(broadcast["samples"], a["samples"] + _constant(2, 8, 8)["samples"])


def test_latent_multiply(ctx: RunContext) -> None:
    latent = {**_latent(), "batch_index": [7]}
    original = latent["samples"].clone()
    (out,) = LatentMultiply().run(ctx, samples=latent, multiplier=-2.5)
    torch.testing.assert_close(out["samples"], original * -2.5)
    assert out["batch_index"] == [7]
    assert torch.equal(latent["samples"], original)
