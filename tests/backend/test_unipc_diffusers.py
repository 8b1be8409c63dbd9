"""uni_pc and uni_pc_bh2 against diffusers' UniPCMultistepScheduler, an independent implementation of
UniPC (Zhao et al. 2023), on a nonlinear denoiser.

ComfyUI's UniPC (which Loom follows) is UniPC-3 with data prediction, B(h) = h (bh1) or e^h - 1 (bh2),
lower orders on the first and last steps, run in the variance-preserving convention from the first
sigma to 0.001 (standing in for the schedule's final 0), and divided by that point's alpha at the end.
diffusers is configured the same way (``solver_order=3``, ``predict_x0``, ``solver_type``,
``lower_order_final``) and handed the same sigmas, ending at 0.001; it is driven as a pipeline drives
it, with the network's eps. Compared: the final latent.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UniPCMultistepScheduler
from torch import Tensor

from engine.backend.samplers import get_sampler

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' numpy use

MU, SD = 0.3, 0.8
END = 0.001


def denoiser(x: Tensor, sigma: Tensor, **_: object) -> Tensor:
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x)
    return (x * SD**2 + MU * s**2) / (SD**2 + s**2) + 0.1 * torch.sin(x) / (1.0 + s)


def karras(steps: int, sigma_min: float = 0.03, sigma_max: float = 14.6, rho: float = 7.0) -> Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)]).float()


def diffusers_unipc(variant: str, sigmas: Tensor, x: Tensor) -> Tensor:
    """The VE latent diffusers' UniPC reaches at sigma 0.001 from the VE latent ``x`` at sigmas[0]."""
    scheduler = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        solver_order=3, predict_x0=True, solver_type=variant,
                                        lower_order_final=True, prediction_type="epsilon")
    steps = len(sigmas) - 1
    scheduler.set_timesteps(steps)
    ends = sigmas.clone()
    ends[-1] = END
    scheduler.sigmas = ends  # the network never sees diffusers' timesteps: eps comes from the sigma
    scheduler.set_begin_index(0)
    alpha = (1 + ends**2) ** -0.5
    sample = x * alpha[0]
    for index, timestep in enumerate(scheduler.timesteps):
        sigma = ends[index]
        x_ve = sample / alpha[index]
        eps = (x_ve - denoiser(x_ve, sigma.reshape(1))) / sigma
        sample = scheduler.step(eps, timestep, sample).prev_sample
    assert scheduler.step_index == steps
    return sample / alpha[-1]


@pytest.mark.parametrize("steps", [4, 7, 12])
@pytest.mark.parametrize(("name", "variant"), [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
def test_unipc_matches_diffusers(name: str, variant: str, steps: int) -> None:
    sigmas = karras(steps)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(steps)) * float(sigmas[0])
    ours = get_sampler(name)(denoiser, x.clone(), sigmas)
    reference = diffusers_unipc(variant, sigmas, x)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, reference, rtol=2e-4, atol=2e-4)
    assert (ours - x).abs().mean() > 1.0  # it sampled
