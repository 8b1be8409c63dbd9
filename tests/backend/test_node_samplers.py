"""The node-only samplers (lcm_upscale, the alternative Euler CFG++) and the picklable sampler options,
against their step formulas written out on fake models."""

from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.guidance import CFGDenoiser
from engine.backend.node_samplers import (
    NODE_SAMPLERS,
    PowerNoiseScaler,
    TauInterval,
    sample_euler_cfg_pp_alternative,
    sample_lcm_upscale,
)


def test_lcm_upscale_steps() -> None:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([2.0, 1.0, 0.0])
    out = sample_lcm_upscale(lambda v, s: 0.5 * v, x, sigmas, seed=7, total_upscale=2.0, upscale_method="bilinear")
    generator = torch.Generator().manual_seed(7)
    torch.randn((1, 4, 4, 4), generator=generator)  # the initial noise's draw comes first
    step = F.interpolate(0.5 * x, size=(8, 8), mode="bilinear") + 1.0 * torch.randn((1, 4, 8, 8), generator=generator)
    torch.testing.assert_close(out, 0.5 * step)


class Fake:
    """Cond / uncond predictions as fixed affine maps of x (uncond chunk first, as CFGDenoiser batches)."""

    def __call__(self, x: Tensor, sigma: Tensor, conds: list[Any], **_: Any) -> Tensor:
        return torch.cat([0.3 * part + c for part, c in zip(x.chunk(len(conds)), conds, strict=True)])


def test_euler_cfg_pp_alternative_step() -> None:
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    cond, uncond = torch.full_like(x, 0.2), torch.full_like(x, -0.1)
    denoiser = CFGDenoiser(Fake(), cond, uncond, 1.0, needs_uncond=True)  # cfg 1: the uncond pass still runs
    sigmas = torch.tensor([3.0, 1.5])
    out = sample_euler_cfg_pp_alternative(denoiser, x, sigmas)
    den, unc = 0.3 * x + cond, 0.3 * x + uncond
    expected = x + (x - 2 * den + unc) / 3.0 * (1.5 - 3.0)
    torch.testing.assert_close(out, expected)
    assert getattr(NODE_SAMPLERS["euler_cfg_pp_alternative"], "needs_uncond", False)


def test_sampler_options_are_picklable_functions() -> None:
    tau = pickle.loads(pickle.dumps(TauInterval(5.0, 1.0, eta=0.7)))
    assert [tau(torch.tensor(s)) for s in (6.0, 5.0, 2.0, 1.0, 0.5)] == [0.0, 0.7, 0.7, 0.7, 0.0]
    assert TauInterval(5.0, 1.0, eta=0.0)(2.0) == 0.0
    scaler = pickle.loads(pickle.dumps(PowerNoiseScaler(0.5)))
    torch.testing.assert_close(scaler(torch.tensor([4.0])), torch.tensor([8.0]))
