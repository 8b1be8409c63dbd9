"""The custom-sampling guidances (engine/backend/guiders.py through pipeline.guided_denoiser) against
their formulas, on a fake model whose prediction for each conditioning is known."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.guidance import GuidanceHooks, GuidanceStep
from engine.backend.guiders import Guidance
from engine.backend.pipeline import guided_denoiser

X = torch.linspace(-1.0, 1.0, 2 * 4 * 3 * 3).reshape(2, 4, 3, 3)
SIGMA = torch.full((2,), 3.0)
# A "conditioning" here is a tensor the fake model adds to 0.5 * x: its prediction is known exactly.
POS, NEG, MID = (torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3))


class FakeModel:
    """model_fn(x, sigma, conds) -> 0.5 * x + cond per chunk; counts the chunks it was asked for."""

    def __init__(self) -> None:
        self.chunks: list[int] = []

    def __call__(self, x: Tensor, sigma: Tensor, conds: list[Any], **_: Any) -> Tensor:
        self.chunks.append(len(conds))
        parts = x.chunk(len(conds))
        return torch.cat([0.5 * part + cond for part, cond in zip(parts, conds, strict=True)])


def pred(cond: Tensor) -> Tensor:
    return 0.5 * X + cond


def run(guidance: Guidance, hooks: GuidanceHooks | None = None) -> tuple[Tensor, FakeModel]:
    model = FakeModel()
    denoiser = guided_denoiser(model, guidance, hooks or GuidanceHooks(), POS, NEG, MID)
    return denoiser(X, SIGMA), model


@pytest.mark.parametrize(("cfg1", "cfg2"), [(3.0, 5.0), (1.0, 4.0), (2.5, 1.0)])
def test_dual_cfg_regular(cfg1: float, cfg2: float) -> None:
    out, _ = run(Guidance("dual_cfg", [], cfg=cfg1, cfg2=cfg2))
    p, m, n = pred(POS), pred(MID), pred(NEG)
    if cfg2 == 1.0:  # ComfyUI skips the negative pass; its prediction counts as 0 and cancels out
        n = torch.zeros_like(n)
    expected = n + (m - n) * cfg2 + (p - m) * cfg1
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_dual_cfg_nested() -> None:
    out, model = run(Guidance("dual_cfg", [], cfg=3.0, cfg2=2.0, nested=True))
    p, m, n = pred(POS), pred(MID), pred(NEG)
    torch.testing.assert_close(out, n + 2.0 * ((m + (p - m) * 3.0) - n), rtol=1e-6, atol=1e-6)
    assert model.chunks == [3]  # one batch: negative, positive, cond2


def test_dual_cfg_both_one_is_the_positive_alone() -> None:
    out, model = run(Guidance("dual_cfg", [], cfg=1.0, cfg2=1.0))
    assert model.chunks == [1]
    torch.testing.assert_close(out, pred(POS), rtol=0, atol=0)


def test_dual_cfg_model_cfg_function_guides_the_cond2_negative_pair() -> None:
    hooks = GuidanceHooks()
    hooks.cfg_function = lambda step: step.uncond_denoised + (step.cond_denoised - step.uncond_denoised) * 0.0
    out, _ = run(Guidance("dual_cfg", [], cfg=3.0, cfg2=5.0), hooks)
    torch.testing.assert_close(out, pred(NEG) + (pred(POS) - pred(MID)) * 3.0, rtol=1e-6, atol=1e-6)


def perp_neg_reference(pos: Tensor, neg: Tensor, empty: Tensor, cfg: float, neg_scale: float) -> Tensor:
    """Armandpour et al. 2023, written out with flattened dot products over the whole batch."""
    p, n = (pos - empty).flatten(), (neg - empty).flatten()
    perp = n - (torch.dot(n, p) / torch.dot(p, p)) * p
    return empty + cfg * (p - neg_scale * perp).reshape(pos.shape)


@pytest.mark.parametrize(("cfg", "neg_scale"), [(7.0, 1.0), (1.0, 2.0), (4.0, 0.0)])
def test_perp_neg(cfg: float, neg_scale: float) -> None:
    out, _ = run(Guidance("perp_neg", [], cfg=cfg, neg_scale=neg_scale))
    expected = perp_neg_reference(pred(POS), pred(NEG), pred(MID), cfg, neg_scale)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_perp_neg_removes_only_the_perpendicular_part() -> None:
    # a negative parallel to the positive direction changes nothing: plain cfg relative to the empty prompt
    parallel = MID + 0.3 * (POS - MID)
    model = FakeModel()
    out = guided_denoiser(model, Guidance("perp_neg", [], cfg=6.0, neg_scale=1.0), GuidanceHooks(), POS, parallel,
                          MID)(X, SIGMA)
    torch.testing.assert_close(out, pred(MID) + 6.0 * (pred(POS) - pred(MID)), rtol=1e-5, atol=1e-5)


def test_perp_neg_cfg_one_scale_zero_runs_the_positive_only() -> None:
    out, model = run(Guidance("perp_neg", [], cfg=1.0, neg_scale=0.0))
    assert model.chunks == [1]
    torch.testing.assert_close(out, pred(POS), rtol=0, atol=0)


def test_basic_guider_is_the_positive_prediction() -> None:
    out, model = run(Guidance.basic([]))
    assert model.chunks == [1]
    torch.testing.assert_close(out, pred(POS), rtol=0, atol=0)


def test_cfg_guider_and_post_cfg_hooks_see_the_guided_step() -> None:
    seen: list[GuidanceStep] = []
    hooks = GuidanceHooks()
    hooks.post_cfg.append(lambda step, denoised: seen.append(step) or denoised * 2.0)
    out, _ = run(Guidance("cfg", [], cfg=4.0), hooks)
    expected = pred(NEG) + (pred(POS) - pred(NEG)) * 4.0
    torch.testing.assert_close(out, expected * 2.0, rtol=1e-6, atol=1e-6)
    assert seen and seen[0].cfg_scale == 4.0
