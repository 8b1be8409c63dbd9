"""The custom-sampling schedules and sigma tools against their published formulas (computed here in
float64), diffusers' schedulers where they have the same schedule, and the published AYS / GITS tables."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from scipy import stats

from engine.backend import schedules, sigma_tools, step_tables
from engine.backend.model_sampling import ModelSampling

SD_MAX, SD_MIN = 14.614642, 0.0291675


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas()


def _euler(**options: object) -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  timestep_spacing="linspace", **options)


def _close(ours: torch.Tensor, reference: np.ndarray | list[float], rtol: float = 1e-5, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(ours.double().numpy(), np.asarray(reference, dtype=np.float64), rtol=rtol, atol=atol)


# Model-free schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_karras_matches_diffusers_karras_sigmas(steps: int) -> None:
    reference = _euler(use_karras_sigmas=True)
    reference.set_timesteps(steps)
    expected = reference.sigmas.double().numpy()
    ours = schedules.get_sigmas_karras(steps, float(expected[-2]), float(expected[0]))
    assert len(ours) == steps + 1 and float(ours[-1]) == 0.0
    if steps > 1:
        _close(ours, expected, rtol=2e-5)


@pytest.mark.parametrize("steps", [3, 20])
def test_exponential_matches_diffusers_exponential_sigmas(steps: int) -> None:
    reference = _euler(use_exponential_sigmas=True)
    reference.set_timesteps(steps)
    expected = reference.sigmas.double().numpy()
    _close(schedules.get_sigmas_exponential(steps, float(expected[-2]), float(expected[0])), expected, rtol=2e-5)


@pytest.mark.parametrize("rho", [1.0, 0.5, 2.5])
def test_polyexponential_formula(rho: float) -> None:
    ramp = np.linspace(1, 0, 12) ** rho
    expected = np.exp(ramp * (math.log(SD_MAX) - math.log(SD_MIN)) + math.log(SD_MIN))
    _close(schedules.get_sigmas_polyexponential(12, SD_MIN, SD_MAX, rho), [*expected, 0.0])
    if rho == 1.0:  # rho 1 is the exponential schedule
        exponential = schedules.get_sigmas_exponential(12, SD_MIN, SD_MAX).double().numpy()
        _close(schedules.get_sigmas_polyexponential(12, SD_MIN, SD_MAX), exponential)


def test_vp_formula() -> None:
    t = np.linspace(1, 1e-3, 15)
    expected = np.sqrt(np.exp(19.9 * t**2 / 2 + 0.1 * t) - 1)  # VP-SDE: sigma^2 = exp(int beta) - 1
    _close(schedules.get_sigmas_vp(15), [*expected, 0.0], rtol=1e-5)
    _close(schedules.get_sigmas_vp(5, 10.0, 0.5, 0.01), [*np.sqrt(np.expm1(10 * np.linspace(1, 0.01, 5) ** 2 / 2
                                                                           + 0.5 * np.linspace(1, 0.01, 5))), 0])


@pytest.mark.parametrize(("mu", "beta"), [(0.0, 0.5), (0.7, 1.3)])
def test_laplace_formula(mu: float, beta: float) -> None:
    x = np.linspace(0, 1, 9)
    # Inverse CDF of Laplace(mu, beta) in log sigma; 1e-5 keeps log(0) out at the ends.
    lam = mu - beta * np.sign(0.5 - x) * np.log(1 - 2 * np.abs(0.5 - x) + 1e-5)
    expected = np.clip(np.exp(lam), SD_MIN, SD_MAX)
    ours = schedules.get_sigmas_laplace(9, SD_MIN, SD_MAX, mu, beta)
    assert len(ours) == 9  # ComfyUI's Laplace schedule has no final 0
    _close(ours, expected, rtol=1e-5)


# Schedules of a model -------------------------------------------------------------------------------


def test_sd_turbo_timesteps(ms: ModelSampling) -> None:
    table = ms.sigmas.double().numpy()
    _close(schedules.sd_turbo_sigmas(ms, 1), [table[999], 0.0])
    _close(schedules.sd_turbo_sigmas(ms, 4), [table[999], table[899], table[799], table[699], 0.0])
    _close(schedules.sd_turbo_sigmas(ms, 2, denoise=0.5), [table[499], table[399], 0.0])
    assert len(schedules.sd_turbo_sigmas(ms, 10)) == 11


@pytest.mark.parametrize(("alpha", "beta"), [(0.6, 0.6), (0.3, 0.8)])
def test_beta_scheduler_quantiles(ms: ModelSampling, alpha: float, beta: float) -> None:
    timesteps = np.rint(stats.beta.ppf(1 - np.arange(25) / 25, alpha, beta) * 999).astype(int)
    picked = [int(t) for i, t in enumerate(timesteps) if i == 0 or t != timesteps[i - 1]]
    expected = [float(ms.sigmas[t]) for t in picked] + [0.0]
    _close(schedules.beta_scheduler(ms, 25, alpha=alpha, beta=beta), expected, rtol=0, atol=0)


def test_basic_scheduler_denoise(ms: ModelSampling) -> None:
    full = schedules.calculate_sigmas(ms, "karras", int(10 / 0.4))
    torch.testing.assert_close(schedules.basic_scheduler(ms, "karras", 10, 0.4), full[-11:])
    torch.testing.assert_close(schedules.basic_scheduler(ms, "normal", 7), schedules.calculate_sigmas(ms, "normal", 7))
    assert schedules.basic_scheduler(ms, "normal", 7, 0.0).numel() == 0


# Published tables -----------------------------------------------------------------------------------


def _loglinear(values: list[float], num: int) -> list[float]:
    """Interpolate log sigma linearly, by hand: position p in [0, 1] along the ascending sequence."""
    ascending = [math.log(v) for v in reversed(values)]
    out = []
    for k in range(num):
        p = k / (num - 1) * (len(ascending) - 1)
        i = min(int(p), len(ascending) - 2)
        w = p - i
        out.append(math.exp((1 - w) * ascending[i] + w * ascending[i + 1]))
    return out[::-1]


def test_align_your_steps_tables() -> None:
    sd1 = step_tables.AYS_NOISE_LEVELS["SD1"]
    _close(step_tables.align_your_steps("SD1", 10), [*sd1[:-1], 0.0])
    assert step_tables.AYS_NOISE_LEVELS["SDXL"][1] == pytest.approx(6.3184485287)
    assert step_tables.AYS_NOISE_LEVELS["SVD"][0] == 700.0
    for model_type, steps in (("SD1", 4), ("SDXL", 25), ("SVD", 13)):
        expected = _loglinear(list(step_tables.AYS_NOISE_LEVELS[model_type]), steps + 1)
        _close(step_tables.align_your_steps(model_type, steps), [*expected[:-1], 0.0])


def test_align_your_steps_denoise() -> None:
    sdxl = step_tables.AYS_NOISE_LEVELS["SDXL"]
    _close(step_tables.align_your_steps("SDXL", 10, denoise=0.5), [*sdxl[5:-1], 0.0])  # round(5) + 1 values
    assert step_tables.align_your_steps("SD1", 10, denoise=0.0).numel() == 0
    with pytest.raises(ValueError, match="SD1"):
        step_tables.align_your_steps("SD3", 10)


def test_gits_tables_shape() -> None:
    tables = step_tables.gits_tables()
    assert sorted(tables) == [round(0.80 + 0.05 * k, 2) for k in range(15)]
    for rows in tables.values():
        assert [len(row) for row in rows] == list(range(3, 22))  # 2..20 steps
        for row in rows:
            assert row[0] == 14.61464119 and row[-1] == 0.02916753
            assert all(a > b for a, b in zip(row, row[1:], strict=False))
    # GITS picks every step from one teacher grid of noise levels (98 of them appear); a mistyped
    # value would be one of a kind. Only these two published values occur in a single row.
    counts = Counter(value for rows in tables.values() for row in rows for value in row)
    assert len(counts) == 98
    assert sorted(value for value, n in counts.items() if n == 1) == [0.66947293, 0.77538133]


def test_gits_scheduler() -> None:
    tables = step_tables.gits_tables()
    assert tables[1.2][8] == (14.61464119, 5.85520077, 2.84484982, 1.67050016, 1.08895338, 0.74807048, 0.50118381,
                              0.32104823, 0.19894916, 0.09824532, 0.02916753)  # the published 10-step row
    _close(step_tables.gits(0.80, 2), [14.61464119, 7.49001646, 0.0])
    _close(step_tables.gits(1.00, 2), [14.61464119, 1.56271636, 0.0])
    _close(step_tables.gits(1.20, 10), [*tables[1.2][8][:-1], 0.0])
    expected = _loglinear(list(tables[1.5][-1]), 31)
    _close(step_tables.gits(1.5, 30), [*expected[:-1], 0.0])
    _close(step_tables.gits(1.2, 10, denoise=0.3), [*tables[1.2][8][-4:-1], 0.0])
    with pytest.raises(ValueError, match="coeff"):
        step_tables.gits(1.23, 10)


# Sigma tools ----------------------------------------------------------------------------------------

SIGMAS = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.5, 0.0])


def test_split_sigmas() -> None:
    high, low = sigma_tools.split_sigmas(SIGMAS, 2)
    assert high.tolist() == [10.0, 6.0, 3.0] and low.tolist() == [3.0, 1.0, 0.5, 0.0]
    high, low = sigma_tools.split_sigmas(SIGMAS, 0)
    assert high.tolist() == [10.0] and low.tolist() == SIGMAS.tolist()


def test_split_sigmas_denoise() -> None:
    high, low = sigma_tools.split_sigmas_denoise(SIGMAS, 0.4)  # 5 steps -> the last 2 in low; 1.0 shared
    assert high.tolist() == [10.0, 6.0, 3.0, 1.0] and low.tolist() == [1.0, 0.5, 0.0]
    high, low = sigma_tools.split_sigmas_denoise(SIGMAS, 0.0)  # ComfyUI's [:-0]: empty high part
    assert high.tolist() == [] and low.tolist() == [0.0]


def test_flip_and_set_first() -> None:
    assert sigma_tools.flip_sigmas(SIGMAS).tolist() == pytest.approx([0.0001, 0.5, 1.0, 3.0, 6.0, 10.0])
    assert sigma_tools.flip_sigmas(torch.tensor([1.0, 2.0])).tolist() == [2.0, 1.0]
    assert sigma_tools.flip_sigmas(torch.zeros(0)).numel() == 0
    out = sigma_tools.set_first_sigma(SIGMAS, 136.0)
    assert out.tolist() == [136.0, 6.0, 3.0, 1.0, 0.5, 0.0] and SIGMAS[0] == 10.0


def test_extend_intermediate_sigmas() -> None:
    out = sigma_tools.extend_intermediate_sigmas(SIGMAS, 2, -1.0, 2.0, "linear")
    assert out.tolist() == [10.0, 8.0, 6.0, 4.5, 3.0, 2.0, 1.0, 0.5, 0.0]
    out = sigma_tools.extend_intermediate_sigmas(SIGMAS, 3, 7.0, 0.0, "cosine")
    s1, s2 = math.sin(math.pi / 6), math.sin(math.pi / 3)
    expected = [10.0, 6.0, 6 - 3 * s1, 6 - 3 * s2, 3.0, 3 - 2 * s1, 3 - 2 * s2, 1.0,
                1 - 0.5 * s1, 1 - 0.5 * s2, 0.5, 0.5 - 0.5 * s1, 0.5 - 0.5 * s2, 0.0]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    sine = sigma_tools.extend_intermediate_sigmas(torch.tensor([4.0, 0.0]), 2, -1.0, 0.0, "sine")
    assert sine.tolist() == pytest.approx([4.0, 4.0 - 4.0 * (1 - math.cos(math.pi / 4)), 0.0])
    with pytest.raises(ValueError, match="spacing"):
        sigma_tools.extend_intermediate_sigmas(SIGMAS, 2, -1.0, 0.0, "cubic")


# KSampler's last two schedulers ----------------------------------------------------------------------


def _mochi_fraction(steps: int, threshold: float, linear: int) -> list[float]:
    """Genmo's Mochi noise fraction f(i), derived here from its definition: linear from 0 to ``threshold``
    over the first ``linear`` steps, then the quadratic q that continues it (same value and slope at
    i = linear) and reaches 1 at i = steps, solved as a 3x3 linear system in float64."""
    system = np.array([[linear**2, linear, 1.0], [2.0 * linear, 1.0, 0.0], [steps**2, steps, 1.0]])
    a, b, c = np.linalg.solve(system, np.array([threshold, threshold / linear, 1.0]))
    return [i * threshold / linear if i < linear else a * i * i + b * i + c for i in range(steps + 1)]


@pytest.mark.parametrize("steps", [2, 7, 20, 50])
def test_linear_quadratic_matches_its_definition(ms: ModelSampling, steps: int) -> None:
    reference = [(1.0 - f) * SD_MAX for f in _mochi_fraction(steps, 0.025, steps // 2)]
    ours = schedules.calculate_sigmas(ms, "linear_quadratic", steps)
    assert len(ours) == steps + 1 and float(ours[-1]) == pytest.approx(0.0, abs=1e-5)
    _close(ours, reference, rtol=1e-5, atol=1e-5)
    assert (ours[1:] <= ours[:-1]).all()


def test_linear_quadratic_custom_split(ms: ModelSampling) -> None:
    reference = [(1.0 - f) * SD_MAX for f in _mochi_fraction(10, 0.1, 3)]
    _close(schedules.linear_quadratic_scheduler(ms, 10, threshold_noise=0.1, linear_steps=3), reference,
           rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [2, 5, 30])
def test_kl_optimal_matches_the_paper(ms: ModelSampling, steps: int) -> None:
    """Sabour et al. 2024, Theorem 3.1: sigma(u) = tan((1 - u) atan(sigma_max) + u atan(sigma_min)),
    u = i / (n - 1): the schedule is uniform in atan(sigma)."""
    u = np.arange(steps, dtype=np.float64) / (steps - 1)
    reference = [*np.tan((1 - u) * math.atan(SD_MAX) + u * math.atan(SD_MIN)), 0.0]
    ours = schedules.calculate_sigmas(ms, "kl_optimal", steps)
    _close(ours, reference, rtol=2e-5, atol=1e-6)
    angles = torch.atan(ours[:-1].double())
    torch.testing.assert_close(angles[1:] - angles[:-1], (angles[1] - angles[0]).expand(steps - 1),
                               rtol=1e-4, atol=1e-6)
