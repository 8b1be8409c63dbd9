"""The samplers issue 17 added (cfg++, heunpp2, ddpm, ipndm(_v), deis, res_multistep, gradient
estimation, er_sde, seeds, sa_solver, the *_gpu SDE samplers): names, reproducibility, CFG++ through a
real CFGDenoiser, and accuracy on a Gaussian toy problem whose probability-flow ODE has a closed form.

Data x0 ~ N(MU, SD^2) per element: the exact denoiser is D(x, sigma) = (x SD^2 + MU sigma^2) / (SD^2 +
sigma^2) and the ODE solution x(sigma) = MU + (x(sigma_0) - MU) sqrt(SD^2 + sigma^2) / sqrt(SD^2 + sigma_0^2).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend import names
from engine.backend.guidance import CFGDenoiser
from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import BrownianTreeNoiseSampler
from engine.backend.samplers import _SAMPLERS, CFG_PP_SAMPLERS, SAMPLER_NAMES, get_sampler, needs_uncond
from engine.backend.schedules import sigmas_for

pytestmark = pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning")

MU, SD = 0.5, 0.6

# ComfyUI's KSampler combo (comfy/samplers.py KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]), current master.
COMFYUI_SAMPLERS = (
    "euler euler_cfg_pp euler_ancestral euler_ancestral_cfg_pp heun heunpp2 dpm_2 dpm_2_ancestral lms dpm_fast "
    "dpm_adaptive dpmpp_2s_ancestral dpmpp_2s_ancestral_cfg_pp dpmpp_sde dpmpp_sde_gpu dpmpp_2m dpmpp_2m_cfg_pp "
    "dpmpp_2m_sde dpmpp_2m_sde_gpu dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu dpmpp_3m_sde dpmpp_3m_sde_gpu ddpm lcm "
    "ipndm ipndm_v deis res_multistep res_multistep_cfg_pp res_multistep_ancestral res_multistep_ancestral_cfg_pp "
    "gradient_estimation gradient_estimation_cfg_pp er_sde seeds_2 seeds_3 sa_solver sa_solver_pece ddim uni_pc "
    "uni_pc_bh2"
).split()

NEW_DETERMINISTIC = [
    "euler_cfg_pp", "heunpp2", "dpmpp_2m_cfg_pp", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
]
NEW_STOCHASTIC = [
    "euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde_gpu", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde_gpu", "ddpm", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece",
]
CFG_PP_BASE = {
    "euler_cfg_pp": "euler",
    "euler_ancestral_cfg_pp": "euler_ancestral",
    "dpmpp_2s_ancestral_cfg_pp": "dpmpp_2s_ancestral",
    "dpmpp_2m_cfg_pp": "dpmpp_2m",
    "res_multistep_cfg_pp": "res_multistep",
    "res_multistep_ancestral_cfg_pp": "res_multistep_ancestral",
    "gradient_estimation_cfg_pp": "gradient_estimation",
}


def denoiser(x: Tensor, sigma: Tensor, **_: object) -> Tensor:
    s = sigma.reshape(-1, 1, 1, 1)
    return (x * SD**2 + MU * s**2) / (SD**2 + s**2)


def exact(x_start: Tensor, sigma_start: float, sigma_end: float) -> Tensor:
    return MU + (x_start - MU) * math.sqrt(SD**2 + sigma_end**2) / math.sqrt(SD**2 + sigma_start**2)


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas()


@pytest.fixture(scope="module")
def unit_noise() -> Tensor:
    return torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def ode_error(ms: ModelSampling, name: str, steps: int, noise: Tensor, scheduler: str = "karras") -> float:
    sigmas = sigmas_for(ms, scheduler, name, steps)
    sigma_start = float(sigmas[0])
    x = MU + noise * math.sqrt(SD**2 + sigma_start**2)
    out = get_sampler(name)(denoiser, x, sigmas, seed=0)
    assert torch.isfinite(out).all()
    return float(((out - exact(x, sigma_start, float(sigmas[-1]))) ** 2).mean().sqrt())


# Names ------------------------------------------------------------------------------------------------


def test_registry_is_comfyuis_ksampler_list_in_order() -> None:
    assert SAMPLER_NAMES == COMFYUI_SAMPLERS
    assert list(names.SAMPLER_NAMES) == SAMPLER_NAMES


@pytest.mark.parametrize("name", names.SAMPLER_NAMES)
def test_every_listed_name_resolves(name: str) -> None:
    assert callable(get_sampler(name))


def test_cfg_pp_samplers_need_the_uncond() -> None:
    assert CFG_PP_SAMPLERS == set(CFG_PP_BASE)
    assert needs_uncond("euler_cfg_pp") and not needs_uncond("euler")


# Reproducibility ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_DETERMINISTIC)
def test_deterministic_samplers_are_deterministic(ms: ModelSampling, name: str) -> None:
    assert _SAMPLERS[name].noise in {"none", "churn"}
    sigmas = sigmas_for(ms, "karras", name, 6)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * float(sigmas[0])
    a = get_sampler(name)(denoiser, x, sigmas, seed=1)
    b = get_sampler(name)(denoiser, x, sigmas, seed=2)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NEW_STOCHASTIC)
def test_stochastic_samplers_are_reproducible_per_seed(ms: ModelSampling, name: str) -> None:
    sigmas = sigmas_for(ms, "karras", name, 6)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * float(sigmas[0])
    state = torch.get_rng_state()
    sampler = get_sampler(name)
    a = sampler(denoiser, x, sigmas, seed=11)
    b = sampler(denoiser, x, sigmas, seed=11)
    c = sampler(denoiser, x, sigmas, seed=12)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG is left alone"
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"])
def test_gpu_variant_equals_the_cpu_variant_on_the_cpu(ms: ModelSampling, name: str) -> None:
    sigmas = sigmas_for(ms, "karras", name, 8)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * float(sigmas[0])
    on_device = get_sampler(f"{name}_gpu")(denoiser, x, sigmas, seed=7)
    assert torch.equal(on_device, get_sampler(name)(denoiser, x, sigmas, seed=7))


def test_device_brownian_tree_on_the_cpu_is_the_cpu_tree() -> None:
    x = torch.zeros(1, 4, 4, 4)
    cpu = BrownianTreeNoiseSampler(x, 0.03, 14.6, 5)
    device = BrownianTreeNoiseSampler(x, 0.03, 14.6, 5, cpu=False)
    s, s_next = torch.tensor(3.0), torch.tensor(2.0)
    assert torch.equal(cpu(s, s_next), device(s, s_next))


@pytest.mark.parametrize("name", ["seeds_2", "seeds_3", "er_sde", "sa_solver", "ddpm", "res_multistep_ancestral"])
def test_seeded_samplers_use_the_seeded_noise_sampler(ms: ModelSampling, name: str) -> None:
    """ComfyUI's default_noise_sampler: seed + 1 on the CPU, so an explicit SeededNoiseSampler is the same."""
    from engine.backend.noise import SeededNoiseSampler

    sigmas = sigmas_for(ms, "karras", name, 6)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    by_seed = get_sampler(name)(denoiser, x, sigmas, seed=21)
    explicit = get_sampler(name)(denoiser, x, sigmas, noise_sampler=SeededNoiseSampler(x, 21))
    assert _SAMPLERS[name].noise == "seeded"
    assert torch.equal(by_seed, explicit)


# CFG++ --------------------------------------------------------------------------------------------------


COND, UNCOND = 0.8, -0.3


def guided(cfg: float, *, needs_uncond: bool = False, calls: list[int] | None = None) -> CFGDenoiser:
    """A CFGDenoiser whose 'model' predicts the constants COND / UNCOND mixed into the Gaussian denoiser."""

    def model_fn(x: Tensor, sigma: Tensor, conds: list[float], **_: object) -> Tensor:
        if calls is not None:
            calls.append(len(conds))
        chunks = x.chunk(len(conds))
        sigmas = sigma.chunk(len(conds))
        return torch.cat([denoiser(c, s) + v for c, s, v in zip(chunks, sigmas, conds, strict=True)])

    return CFGDenoiser(model_fn, COND, UNCOND, cfg, needs_uncond=needs_uncond)


def test_euler_cfg_pp_one_step_is_its_formula() -> None:
    """x1 = denoised_cfg + sigma_1 (x0 - uncond) / sigma_0 (Chung et al. 2024, Algorithm 1 in sigma form)."""
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 5
    sigmas = torch.tensor([5.0, 2.0])
    cfg = 1.7
    out = get_sampler("euler_cfg_pp")(guided(cfg), x, sigmas)
    sigma = torch.full((2,), 5.0)
    cond, uncond = denoiser(x, sigma) + COND, denoiser(x, sigma) + UNCOND
    denoised = uncond + cfg * (cond - uncond)
    torch.testing.assert_close(out, denoised + 2.0 * (x - uncond) / 5.0)


def test_euler_ancestral_cfg_pp_one_step_is_its_formula() -> None:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 5
    sigmas = torch.tensor([5.0, 2.0])
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    out = get_sampler("euler_ancestral_cfg_pp")(guided(1.5), x, sigmas, noise_sampler=lambda s, t: noise)
    up = math.sqrt(4.0 * (25.0 - 4.0) / 25.0)
    down = math.sqrt(4.0 - up**2)
    cond, uncond = denoiser(x, torch.full((1,), 5.0)) + COND, denoiser(x, torch.full((1,), 5.0)) + UNCOND
    expected = uncond + 1.5 * (cond - uncond) + down * (x - uncond) / 5.0 + up * noise
    torch.testing.assert_close(out, expected)


def test_dpmpp_2m_cfg_pp_two_steps_are_its_formula() -> None:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 5
    grid = [5.0, 2.0, 0.7]
    out = get_sampler("dpmpp_2m_cfg_pp")(guided(2.0), x, torch.tensor(grid))
    # step 1 (first order): x1 = D + e^-h (x0 - U); step 2 adds -expm1(-h) / (2r) (D - U_prev)
    d0 = denoiser(x, torch.full((1,), grid[0]))
    big0, u0 = d0 + UNCOND + 2.0 * (COND - UNCOND), d0 + UNCOND
    h0 = math.log(grid[0] / grid[1])
    x1 = big0 + math.exp(-h0) * (x - u0)
    d1 = denoiser(x1, torch.full((1,), grid[1]))
    big1, u1 = d1 + UNCOND + 2.0 * (COND - UNCOND), d1 + UNCOND
    h1 = math.log(grid[1] / grid[2])
    r = h0 / h1
    expected = big1 + math.exp(-h1) * (x1 - u1) - math.expm1(-h1) / (2 * r) * (big1 - u0)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", sorted(CFG_PP_BASE))
def test_cfg_pp_with_uncond_equal_to_cond_is_the_base_sampler(ms: ModelSampling, name: str) -> None:
    """With cfg 1 and the uncond pass skipped, CFG++ has no separate uncond and steps as its base sampler."""
    sigmas = sigmas_for(ms, "karras", name, 8)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2)) * float(sigmas[0])
    out = get_sampler(name)(guided(1.0), x, sigmas, seed=4)
    base = get_sampler(CFG_PP_BASE[name])(guided(1.0), x, sigmas, seed=4)
    torch.testing.assert_close(out, base, rtol=1e-5, atol=1e-5)


def test_cfg_pp_reads_the_real_uncond_at_cfg_one_when_asked() -> None:
    """ComfyUI runs the uncond pass for cfg++ even at cfg 1; needs_uncond=True gives that."""
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 5
    sigmas = torch.tensor([5.0, 2.0])
    calls: list[int] = []
    out = get_sampler("euler_cfg_pp")(guided(1.0, needs_uncond=True, calls=calls), x, sigmas)
    assert calls == [2]
    sigma = torch.full((1,), 5.0)
    cond, uncond = denoiser(x, sigma) + COND, denoiser(x, sigma) + UNCOND
    torch.testing.assert_close(out, cond + 2.0 * (x - uncond) / 5.0)


# Accuracy on the Gaussian problem ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [("ipndm", 0.002), ("ipndm_v", 0.002), ("deis", 0.005), ("res_multistep", 0.01), ("gradient_estimation", 0.05),
     ("heunpp2", 0.05), ("seeds_2", 0.005), ("seeds_3", 0.002), ("sa_solver", 0.002)],
)
def test_deterministic_forms_follow_the_exact_ode(
    ms: ModelSampling, unit_noise: Tensor, name: str, tolerance: float
) -> None:
    sigmas = sigmas_for(ms, "karras", name, 30)
    x = MU + unit_noise * math.sqrt(SD**2 + float(sigmas[0]) ** 2)
    options: dict[str, Any] = {"eta": 0.0} if name.startswith("seeds") else {}
    if name == "sa_solver":
        options = {"tau_func": lambda sigma: 0.0}
    out = get_sampler(name)(denoiser, x, sigmas, **options)
    error = float(((out - exact(x, float(sigmas[0]), 0.0)) ** 2).mean().sqrt())
    assert error < tolerance


@pytest.mark.parametrize(
    ("name", "min_order"), [("deis", 1.7), ("res_multistep", 1.5), ("seeds_2", 1.7), ("seeds_3", 2.2)]
)
def test_convergence_order(ms: ModelSampling, unit_noise: Tensor, name: str, min_order: float) -> None:
    """Doubling the steps (exponential schedule) divides the error by at least 2^min_order.

    (ipndm / ipndm_v are left out: their fixed / diff-sampler weights are exact only for equal or
    geometric steps, and the first-order start dominates their error here.)"""
    sigmas_a = torch.cat([torch.linspace(math.log(10.0), math.log(0.1), 9).exp(), torch.zeros(1)])
    sigmas_b = torch.cat([torch.linspace(math.log(10.0), math.log(0.1), 17).exp(), torch.zeros(1)])
    errors = []
    for sigmas in (sigmas_a, sigmas_b):
        # stop at sigma 0.1 (drop the final jump to 0, which every sampler takes as a plain denoise)
        grid = sigmas[:-1].double()
        x = (MU + unit_noise[:8] * math.sqrt(SD**2 + 100.0)).double()
        options: dict[str, Any] = {"eta": 0.0} if name.startswith("seeds") else {}
        out = get_sampler(name)(denoiser, x, grid, **options)
        errors.append(float(((out - exact(x, 10.0, 0.1)) ** 2).mean().sqrt()))
    assert errors[0] / errors[1] > 2**min_order, errors


@pytest.mark.parametrize("name", ["ipndm", "ipndm_v", "deis"])
def test_multistep_beats_euler_at_ten_steps(ms: ModelSampling, unit_noise: Tensor, name: str) -> None:
    assert ode_error(ms, name, 10, unit_noise) < 0.5 * ode_error(ms, "euler", 10, unit_noise)


@pytest.mark.parametrize(
    "name",
    ["dpmpp_2s_ancestral_cfg_pp", "res_multistep_ancestral", "er_sde", "seeds_2", "seeds_3", "sa_solver",
     "sa_solver_pece", "dpmpp_3m_sde_gpu"],
)
def test_stochastic_samplers_reach_the_data_distribution(ms: ModelSampling, unit_noise: Tensor, name: str) -> None:
    sigmas = sigmas_for(ms, "karras", name, 50)
    out = get_sampler(name)(denoiser, unit_noise * float(sigmas[0]), sigmas, seed=3)
    assert float(out.mean()) == pytest.approx(MU, abs=0.025)
    assert float(out.std()) == pytest.approx(SD, abs=0.03)


def test_ddpm_reaches_the_data_distribution(ms: ModelSampling, unit_noise: Tensor) -> None:
    """DDPM is first order in its variance: close at 200 steps."""
    sigmas = sigmas_for(ms, "normal", "ddpm", 200)
    out = get_sampler("ddpm")(denoiser, unit_noise * float(sigmas[0]), sigmas, seed=3)
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(SD, abs=0.03)
