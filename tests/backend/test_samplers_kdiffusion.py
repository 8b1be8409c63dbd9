"""The k-diffusion-family samplers against the PyPI ``k-diffusion`` package (0.1.1.post1), a test-only
reference (tests/support/kdiffusion.py loads its ``sampling.py``).

Both run the same loop from the same latent over the same Karras sigmas (float32 values, as a
KSampler's) on a nonlinear denoiser, in float64. Noise is fixed three ways:

* an explicit noise sampler that depends only on its arguments (so both see the same noise whatever
  the order of the calls): the update rules are compared;
* Loom with ``seed`` and no noise sampler, against k-diffusion with ComfyUI's seeded construction
  passed in: a CPU ``torch.Generator`` seeded with seed + 1 (ComfyUI on the CPU; the initial noise
  uses the seed itself), one float32 ``randn`` of the latent's shape per call (ancestral samplers),
  or k-diffusion's own ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed)`` (SDE samplers):
  Loom's seeded noise is ComfyUI's.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.samplers import get_sampler
from tests.support.kdiffusion import load_sampling

pytestmark = [pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning"),
              pytest.mark.filterwarnings("ignore:Should have t:UserWarning")]  # k-diffusion's, torchsde's

SHAPE = (2, 4, 6, 6)
MU, SD = 0.3, 0.8


@pytest.fixture(scope="module")
def kd() -> types.ModuleType:
    return load_sampling()


def denoiser(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
    """A smooth nonlinear denoiser: the Gaussian posterior mean plus a sigma-dependent wiggle."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x)
    gaussian = (x * SD**2 + MU * s**2) / (SD**2 + s**2)
    return gaussian + 0.1 * torch.sin(x) / (1.0 + s)


def karras(steps: int, sigma_min: float = 0.03, sigma_max: float = 14.6, rho: float = 7.0) -> Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])
    return sigmas.float().double()  # float32 values: LMS computes its coefficients from float32 sigmas


def start(seed: int = 0) -> Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 14.6


def keyed_noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """Noise that is a function of the step's sigmas alone."""
    key = int(float(sigma) * 1e6) * 7919 + int(float(sigma_next) * 1e6)
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(key % (2**62)), dtype=torch.float64)


def comfy_seeded(x: Tensor, seed: int) -> Callable[[Tensor, Tensor], Tensor]:
    """ComfyUI's default noise sampler for the ancestral samplers on the CPU: a generator seeded with
    seed + 1, float32 draws of the latent's shape."""
    generator = torch.Generator().manual_seed(seed + 1)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=torch.float32, generator=generator).to(x)


def ours(name: str, x: Tensor, sigmas: Tensor, **options: Any) -> Tensor:
    return get_sampler(name)(denoiser, x.clone(), sigmas, **options)


def close(got: Tensor, want: Tensor, tolerance: float = 1e-6) -> None:
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


DETERMINISTIC = [("euler", "sample_euler", {}), ("heun", "sample_heun", {}), ("dpm_2", "sample_dpm_2", {}),
                 ("lms", "sample_lms", {}), ("lms", "sample_lms", {"order": 2}), ("dpmpp_2m", "sample_dpmpp_2m", {})]


@pytest.mark.parametrize(("name", "reference", "options"), DETERMINISTIC, ids=[f"{d[0]}{d[2]}" for d in DETERMINISTIC])
def test_deterministic_samplers(kd: types.ModuleType, name: str, reference: str, options: dict[str, Any]) -> None:
    sigmas, x = karras(8), start()
    if name == "lms":  # ComfyUI's last LMS step to sigma 0 returns the denoised estimate (below)
        sigmas = sigmas[:-1]
    close(ours(name, x, sigmas, **options),
          getattr(kd, reference)(denoiser, x.clone(), sigmas, disable=True, **options))


def test_lms_lands_on_the_denoised_estimate(kd: types.ModuleType) -> None:
    """k-diffusion 0.1.1 integrates the last step to sigma 0 with the multistep polynomial too; ComfyUI
    (and Loom) return that step's denoised estimate instead."""
    sigmas, x = karras(8), start()
    before_last = kd.sample_lms(denoiser, x.clone(), sigmas[:-1], disable=True)
    close(ours("lms", x, sigmas), denoiser(before_last, sigmas[-2].reshape(1)))


@pytest.mark.parametrize(("name", "reference"), [("euler", "sample_euler"), ("heun", "sample_heun"),
                                               ("dpm_2", "sample_dpm_2")])
def test_churn_without_a_seed(kd: types.ModuleType, name: str, reference: str) -> None:
    """Without a seed, churn noise comes from torch's global RNG, as k-diffusion's (in float32 here:
    Loom draws float32 noise, k-diffusion draws in the latent's dtype). k-diffusion 0.1.1 draws on
    every step, ComfyUI and Loom only on churned ones, so every step is churned here (s_tmin 0)."""
    sigmas, x = karras(6).float(), start(1).float()
    churn = {"s_churn": 1.5, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
    torch.manual_seed(5)
    want = getattr(kd, reference)(denoiser, x.clone(), sigmas, disable=True, **churn)
    torch.manual_seed(5)
    close(ours(name, x, sigmas, **churn), want, 1e-4)


STOCHASTIC = [
    ("euler_ancestral", "sample_euler_ancestral", {}),
    ("dpm_2_ancestral", "sample_dpm_2_ancestral", {}),
    ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", {}),
    ("dpmpp_sde", "sample_dpmpp_sde", {}),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde_heun", "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {}),
]


@pytest.mark.parametrize(("name", "reference", "options"), STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
def test_stochastic_update_rules(kd: types.ModuleType, name: str, reference: str, options: dict[str, Any]) -> None:
    sigmas, x = karras(7), start(2)
    want = getattr(kd, reference)(denoiser, x.clone(), sigmas, disable=True, noise_sampler=keyed_noise, **options)
    close(ours(name, x, sigmas, noise_sampler=keyed_noise), want)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ancestral_eta(kd: types.ModuleType, eta: float) -> None:
    sigmas, x = karras(5), start(3)
    want = kd.sample_euler_ancestral(denoiser, x.clone(), sigmas, disable=True, eta=eta, noise_sampler=keyed_noise)
    close(ours("euler_ancestral", x, sigmas, eta=eta, noise_sampler=keyed_noise), want)


ANCESTRAL = [("euler_ancestral", "sample_euler_ancestral"), ("dpm_2_ancestral", "sample_dpm_2_ancestral"),
             ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral")]


@pytest.mark.parametrize(("name", "reference"), ANCESTRAL, ids=[a[0] for a in ANCESTRAL])
def test_seeded_ancestral_noise_is_comfyuis(kd: types.ModuleType, name: str, reference: str) -> None:
    sigmas, x, seed = karras(6), start(4), 1234
    want = getattr(kd, reference)(denoiser, x.clone(), sigmas, disable=True, noise_sampler=comfy_seeded(x, seed))
    close(ours(name, x, sigmas, seed=seed), want)


BROWNIAN = [("dpmpp_sde", "sample_dpmpp_sde", {}), ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {}),
            ("dpmpp_2m_sde_heun", "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
            ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {}), ("dpmpp_2m_sde_gpu", "sample_dpmpp_2m_sde", {})]


@pytest.mark.parametrize(("name", "reference", "options"), BROWNIAN, ids=[b[0] for b in BROWNIAN])
def test_seeded_brownian_noise_is_comfyuis(kd: types.ModuleType, name: str, reference: str,
                                           options: dict[str, Any]) -> None:
    sigmas, x, seed = karras(6), start(5), 77
    tree = kd.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed)
    want = getattr(kd, reference)(denoiser, x.clone(), sigmas, disable=True, noise_sampler=tree, **options)
    close(ours(name, x, sigmas, seed=seed), want, 1e-5)  # the tree's float32 interval ends


def _dpm_range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """ComfyUI runs DPM-Solver from sigmas[0] to the last nonzero sigma."""
    last = sigmas[-1] if float(sigmas[-1]) > 0 else sigmas[-2]
    return last, sigmas[0]


def test_dpm_fast(kd: types.ModuleType) -> None:
    sigmas, x = karras(9), start(6)
    low, high = _dpm_range(sigmas)
    want = kd.sample_dpm_fast(denoiser, x.clone(), low, high, len(sigmas) - 1, disable=True)
    close(ours("dpm_fast", x, sigmas), want)


def test_dpm_adaptive(kd: types.ModuleType) -> None:
    sigmas, x = karras(4), start(7)
    low, high = _dpm_range(sigmas)
    want = kd.sample_dpm_adaptive(denoiser, x.clone(), low, high, disable=True)
    close(ours("dpm_adaptive", x, sigmas), want)
    assert not math.isclose(float(want.std()), float(x.std()))  # it did move the latent
