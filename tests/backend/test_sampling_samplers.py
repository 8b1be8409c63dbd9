"""Samplers on a problem with a known answer.

The data distribution is Gaussian, x0 ~ N(MU, SD^2) per element, so the exact denoiser is the
posterior mean D(x, sigma) = (x SD^2 + MU sigma^2) / (SD^2 + sigma^2), and the probability-flow ODE
has a closed form: x(sigma) = MU + (x(sigma_0) - MU) sqrt(SD^2 + sigma^2) / sqrt(SD^2 + sigma_0^2).
Deterministic samplers are compared with that exact trajectory sample by sample; stochastic ones
by the mean and standard deviation of many samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import SeededNoiseSampler
from engine.backend.samplers import SAMPLER_NAMES, get_sampler
from engine.backend.samplers.ancestral import sample_euler_ancestral
from engine.backend.samplers.common import get_ancestral_step
from engine.backend.samplers.unipc import sample_uni_pc
from engine.backend.schedules import DISCARD_PENULTIMATE_SIGMA_SAMPLERS, get_sigmas_karras, sigmas_for

pytestmark = pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning")  # torchsde end-point rounding

MU, SD = 0.5, 0.6
DETERMINISTIC = [
    "euler",
    "heun",
    "dpm_2",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2m",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
]
STOCHASTIC = [
    "euler_ancestral",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_heun",
    "dpmpp_3m_sde",
    "lcm",
]


def denoiser(x: Tensor, sigma: Tensor, **_: object) -> Tensor:
    # (**_: the cfg++ samplers pass on_guidance, which a plain denoiser ignores)
    s = sigma.reshape(-1, 1, 1, 1)
    return (x * SD**2 + MU * s**2) / (SD**2 + s**2)


def exact(x_start: Tensor, sigma_start: float, sigma_end: float) -> Tensor:
    return MU + (x_start - MU) * math.sqrt(SD**2 + sigma_end**2) / math.sqrt(SD**2 + sigma_start**2)


def end_sigma(name: str, sigmas: Tensor) -> float:
    """Where each sampler stops: dpm_fast / dpm_adaptive at the last nonzero sigma, UniPC at 0.001."""
    if name in {"dpm_fast", "dpm_adaptive"}:
        return float(sigmas[-2])
    if name.startswith("uni_pc"):
        return 0.001
    return float(sigmas[-1])


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas()


@pytest.fixture(scope="module")
def unit_noise() -> Tensor:
    return torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def rms_error(ms: ModelSampling, name: str, steps: int, noise: Tensor, denoise: float = 1.0) -> float:
    """RMS distance to the exact ODE solution, starting from a sample of the noised data at sigmas[0]."""
    sigmas = sigmas_for(ms, "karras", name, steps, denoise=denoise)
    sigma_start = float(sigmas[0])
    x = MU + noise * math.sqrt(SD**2 + sigma_start**2)
    out = get_sampler(name)(denoiser, x, sigmas, seed=0)
    assert torch.isfinite(out).all()
    return float(((out - exact(x, sigma_start, end_sigma(name, sigmas))) ** 2).mean().sqrt())


# Accuracy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_follow_the_exact_ode(ms: ModelSampling, unit_noise: Tensor, name: str) -> None:
    tolerance = {"euler": 0.05, "ddim": 0.05, "dpm_adaptive": 0.05}.get(name, 0.01)
    assert rms_error(ms, name, 30, unit_noise) < tolerance


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_img2img_schedule_not_starting_at_sigma_max(ms: ModelSampling, unit_noise: Tensor, name: str) -> None:
    tolerance = {"euler": 0.05, "ddim": 0.05, "dpm_adaptive": 0.05}.get(name, 0.02)
    assert rms_error(ms, name, 15, unit_noise, denoise=0.6) < tolerance


@pytest.mark.parametrize("name", ["heun", "dpm_2", "lms", "dpm_fast", "dpmpp_2m", "uni_pc", "uni_pc_bh2"])
def test_higher_order_beats_euler_at_few_steps(ms: ModelSampling, unit_noise: Tensor, name: str) -> None:
    assert rms_error(ms, name, 10, unit_noise) < 0.5 * rms_error(ms, "euler", 10, unit_noise)


def test_more_steps_converge(ms: ModelSampling, unit_noise: Tensor) -> None:
    # (UniPC levels off near 1e-3: its float32 VP coefficients at the 0.001 end point, kept as ComfyUI has them.)
    for name in ["euler", "heun", "dpmpp_2m"]:
        errors = [rms_error(ms, name, steps, unit_noise) for steps in (8, 16, 32)]
        assert errors[0] > errors[1] > errors[2], (name, errors)


@pytest.mark.parametrize(
    "name", ["dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"]
)
def test_stochastic_samplers_reach_the_data_distribution(ms: ModelSampling, unit_noise: Tensor, name: str) -> None:
    sigmas = sigmas_for(ms, "karras", name, 50)
    out = get_sampler(name)(denoiser, unit_noise * float(sigmas[0]), sigmas, seed=3)
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(SD, abs=0.03)


def test_euler_ancestral_variance_matches_its_recursion(ms: ModelSampling, unit_noise: Tensor) -> None:
    """Euler ancestral is first order, so it undershoots the variance at 30 steps; for Gaussian data its
    variance obeys var' = var (1 + sigma (sigma_down - sigma) / (SD^2 + sigma^2))^2 + sigma_up^2."""
    sigmas = sigmas_for(ms, "karras", "euler_ancestral", 30)
    out = get_sampler("euler_ancestral")(denoiser, unit_noise * float(sigmas[0]), sigmas, seed=3)
    var = float(sigmas[0]) ** 2
    for sigma, sigma_next in zip(sigmas[:-1].double(), sigmas[1:].double(), strict=True):
        down, up = get_ancestral_step(sigma, sigma_next)
        if down == 0:
            var *= float(SD**2 / (SD**2 + sigma**2)) ** 2
        else:
            var = var * float(1 + sigma * (down - sigma) / (SD**2 + sigma**2)) ** 2 + float(up) ** 2
    assert float(out.std()) == pytest.approx(math.sqrt(var), rel=0.02)
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)


# Reproducibility and sampler-specific semantics -------------------------------------------------


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_are_seeded(ms: ModelSampling, name: str) -> None:
    sigmas = sigmas_for(ms, "karras", name, 6)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * float(sigmas[0])
    state = torch.get_rng_state()
    sampler = get_sampler(name)
    a = sampler(denoiser, x, sigmas, seed=11)
    b = sampler(denoiser, x, sigmas, seed=11)
    c = sampler(denoiser, x, sigmas, seed=12)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ancestral_default_noise_is_the_seeded_cpu_sampler(ms: ModelSampling) -> None:
    sigmas = sigmas_for(ms, "normal", "euler_ancestral", 5)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    by_seed = sample_euler_ancestral(denoiser, x, sigmas, seed=21)
    explicit = sample_euler_ancestral(denoiser, x, sigmas, noise_sampler=SeededNoiseSampler(x, 21))
    assert torch.equal(by_seed, explicit)


def test_ddim_is_euler(ms: ModelSampling, unit_noise: Tensor) -> None:
    sigmas = sigmas_for(ms, "ddim_uniform", "ddim", 10)
    x = unit_noise * float(sigmas[0])
    assert torch.equal(get_sampler("ddim")(denoiser, x, sigmas), get_sampler("euler")(denoiser, x, sigmas))


def test_lcm_ends_on_the_denoised_estimate(ms: ModelSampling) -> None:
    sigmas = sigmas_for(ms, "sgm_uniform", "lcm", 4)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    seen: list[dict] = []
    out = get_sampler("lcm")(denoiser, x, sigmas, seed=1, callback=seen.append)
    assert torch.equal(out, seen[-1]["denoised"])
    # Between steps it re-noises the estimate to the next sigma: x_{i+1} = denoised_i + sigma_{i+1} * noise.
    noise = SeededNoiseSampler(x, 1)
    torch.testing.assert_close(seen[1]["x"], seen[0]["denoised"] + float(sigmas[1]) * noise())


def test_uni_pc_single_step_keeps_comfyui_behaviour(ms: ModelSampling) -> None:
    """ComfyUI's UniPC runs order min(3, steps - 1) = 0 for one step and never updates x."""
    sigmas = torch.tensor([float(ms.sigma_max), 0.0])
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    out = sample_uni_pc(denoiser, x, sigmas)
    alpha_end = 1 / math.sqrt(1 + 0.001**2)
    torch.testing.assert_close(out, x / math.sqrt(1 + float(sigmas[0]) ** 2) / alpha_end)


@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
def test_dpm_fast_and_adaptive_stop_at_the_last_nonzero_sigma(unit_noise: Tensor, name: str) -> None:
    sigmas = get_sigmas_karras(20, 1.0, 14.6)  # a large last sigma makes stopping there visible
    x = MU + unit_noise * math.sqrt(SD**2 + 14.6**2)
    out = get_sampler(name)(denoiser, x, sigmas)
    assert float((out - exact(x, 14.6, 1.0)).abs().max()) < 0.02
    assert float((out - exact(x, 14.6, 0.0)).abs().mean()) > 0.3


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_no_sigmas_or_one_sigma_returns_x(ms: ModelSampling, name: str) -> None:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    calls: list[int] = []

    def counting(x: Tensor, sigma: Tensor, **_: object) -> Tensor:
        calls.append(1)
        return denoiser(x, sigma)

    out = get_sampler(name)(counting, x, torch.tensor([3.0]), seed=0)
    assert torch.equal(out, x)
    assert calls == []


def test_unknown_sampler_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        get_sampler("nope")


def test_sampler_names_follow_comfyui() -> None:
    assert SAMPLER_NAMES[:4] == ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp"]
    assert SAMPLER_NAMES[-3:] == ["ddim", "uni_pc", "uni_pc_bh2"]
    assert DISCARD_PENULTIMATE_SIGMA_SAMPLERS <= set(SAMPLER_NAMES)


# Progress and interrupts ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_callback_once_per_step(ms: ModelSampling, name: str) -> None:
    steps = 6
    sigmas = sigmas_for(ms, "karras", name, steps)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    seen: list[dict] = []
    get_sampler(name)(denoiser, x, sigmas, seed=0, callback=seen.append)
    for info in seen:
        assert {"i", "x", "sigma", "sigma_hat", "denoised"} <= set(info)
        assert info["denoised"].shape == x.shape
    if name in {"dpm_fast", "dpm_adaptive"}:
        assert seen, "reports its internal steps"
    else:
        assert [info["i"] for info in seen] == list(range(steps))


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_raising_from_the_callback_interrupts(ms: ModelSampling, name: str) -> None:
    sigmas = sigmas_for(ms, "karras", name, 8)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    calls: list[int] = []

    class Stop(Exception):
        pass

    def counting(x: Tensor, sigma: Tensor, **_: object) -> Tensor:
        calls.append(1)
        return denoiser(x, sigma)

    def stop(info: dict) -> None:
        raise Stop

    with pytest.raises(Stop):
        get_sampler(name)(counting, x, sigmas, seed=0, callback=stop)
    # dpm_adaptive reports after each attempted (3-evaluation) step, every other sampler after its first evaluation.
    assert len(calls) == (3 if name == "dpm_adaptive" else 1)


def test_extra_args_reach_the_model(ms: ModelSampling) -> None:
    sigmas = sigmas_for(ms, "normal", "dpmpp_2m", 3)
    seen: list[object] = []

    def model(x: Tensor, sigma: Tensor, *, tag: object) -> Tensor:
        seen.append(tag)
        assert sigma.shape == (2,)
        return denoiser(x, sigma)

    get_sampler("dpmpp_2m")(model, torch.zeros(2, 4, 4, 4), sigmas, extra_args={"tag": "t"})
    assert seen == ["t"] * 3


# Independent references: the solvers written straight from their papers, float64 numpy -----------------


def np_denoiser(x: np.ndarray, sigma: float) -> np.ndarray:
    return (x * SD**2 + MU * sigma**2) / (SD**2 + sigma**2)


def ref_euler(x: np.ndarray, sigmas: list[float]) -> np.ndarray:
    """Karras et al. 2022, Algorithm 2 without churn or correction: dx/dsigma = (x - D) / sigma."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = x + (s_next - s) * (x - np_denoiser(x, s)) / s
    return x


def ref_heun(x: np.ndarray, sigmas: list[float]) -> np.ndarray:
    """Karras et al. 2022, Algorithm 1 (Heun's 2nd order method, Euler for the step to 0)."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - np_denoiser(x, s)) / s
        x_euler = x + (s_next - s) * d
        if s_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - np_denoiser(x_euler, s_next)) / s_next
            x = x + (s_next - s) * (d + d_next) / 2
    return x


def ref_dpmpp_2m(x: np.ndarray, sigmas: list[float]) -> np.ndarray:
    """Lu et al. 2022 (DPM-Solver++), Algorithm 2 with alpha = 1, lambda = -log sigma."""
    previous: np.ndarray | None = None
    h_previous = 0.0
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = np_denoiser(x, s)
        if s_next == 0:
            x = d
            continue
        h = math.log(s) - math.log(s_next)
        if previous is None:
            d_eff = d
        else:
            r = h_previous / h
            d_eff = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * previous
        x = (s_next / s) * x - math.expm1(-h) * d_eff
        previous, h_previous = d, h
    return x


def ref_euler_ancestral(x: np.ndarray, sigmas: list[float], noises: list[np.ndarray]) -> np.ndarray:
    """Ancestral step: Euler to sigma_down, then noise of std sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2,
    sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 (the DDPM posterior variance in sigma form)."""
    k = 0
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        up = min(s_next, math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        down = math.sqrt(s_next**2 - up**2)
        d = np_denoiser(x, s)
        if down == 0:
            x = d
        else:
            x = x + (down - s) * (x - d) / s + up * noises[k]
            k += 1
    return x


def ref_lms(x: np.ndarray, sigmas: list[float], order: int = 4) -> np.ndarray:
    """Adams-Bashforth on a non-uniform grid; the coefficients integrated numerically with scipy."""
    integrate = pytest.importorskip("scipy.integrate")
    derivatives: list[np.ndarray] = []
    for i in range(len(sigmas) - 1):
        d_x = np_denoiser(x, sigmas[i])
        derivatives.append((x - d_x) / sigmas[i])
        derivatives = derivatives[-order:]
        if sigmas[i + 1] == 0:
            x = d_x
            continue
        cur = min(i + 1, order)
        for j in range(cur):
            nodes = [sigmas[i - k] for k in range(cur) if k != j]

            def basis(tau: float, node: float = sigmas[i - j], others: list[float] = nodes) -> float:
                out = 1.0
                for other in others:
                    out *= (tau - other) / (node - other)
                return out

            x = x + integrate.quad(basis, sigmas[i], sigmas[i + 1])[0] * derivatives[-1 - j]
    return x


REFERENCES: dict[str, Callable[[np.ndarray, list[float]], np.ndarray]] = {
    "euler": ref_euler,
    "heun": ref_heun,
    "dpmpp_2m": ref_dpmpp_2m,
    "lms": ref_lms,
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("scheduler", ["karras", "normal"])
def test_matches_reference_solver(ms: ModelSampling, name: str, scheduler: str) -> None:
    sigmas = sigmas_for(ms, scheduler, name, 10)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(9)) * float(sigmas[0])
    out = get_sampler(name)(denoiser, x, sigmas)
    grid = [float(s) for s in sigmas]
    expected = REFERENCES[name](x.double().numpy(), grid)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5, rtol=1e-5)


def test_euler_ancestral_matches_reference(ms: ModelSampling) -> None:
    sigmas = sigmas_for(ms, "karras", "euler_ancestral", 10)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(9)) * float(sigmas[0])
    noises = [torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(100 + k)) for k in range(10)]
    queue = list(noises)
    out = sample_euler_ancestral(denoiser, x, sigmas, noise_sampler=lambda s, s_next: queue.pop(0))
    expected = ref_euler_ancestral(x.double().numpy(), [float(s) for s in sigmas], [n.double().numpy() for n in noises])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2"])
def test_churn_adds_fresh_seeded_noise_each_step(ms: ModelSampling, name: str) -> None:
    sigmas = sigmas_for(ms, "karras", name, 8)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    draws: list[Tensor] = []
    source = SeededNoiseSampler(x, 4)

    def recording(sigma: object = None, sigma_next: object = None) -> Tensor:
        draws.append(source())
        return draws[-1]

    sampler = get_sampler(name)
    churned = sampler(denoiser, x, sigmas, s_churn=1.0, s_tmin=0.5, noise_sampler=recording)
    in_range = int((sigmas[:-1] >= 0.5).sum())
    assert len(draws) == in_range
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(sampler(denoiser, x, sigmas, s_churn=1.0, s_tmin=0.5, seed=4), churned)
    assert not torch.equal(sampler(denoiser, x, sigmas), churned)
