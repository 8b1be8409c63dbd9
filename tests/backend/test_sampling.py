"""Model sampling (sigmas, timesteps, eps / v scalings) and sigma schedules."""

from __future__ import annotations

import math

import pytest
import torch

from engine.backend.model_sampling import ModelSampling, is_max_denoise
from engine.backend.schedules import (
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
    SCHEDULER_NAMES,
    calculate_sigmas,
    get_sigmas_karras,
    sigmas_for,
)

SD15_NORMAL_10 = [14.61464, 7.839883, 4.609174, 2.918307, 1.950161, 1.344928, 0.932358, 0.624977, 0.368658, 0.029167, 0]


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas()


# Model sampling ------------------------------------------------------------------------------------


def test_sd15_sigma_range(ms: ModelSampling) -> None:
    assert len(ms.sigmas) == 1000
    assert ms.sigmas.dtype == torch.float32
    assert float(ms.sigma_max) == pytest.approx(14.614642, rel=1e-6)
    assert float(ms.sigma_min) == pytest.approx(math.sqrt(0.00085 / (1 - 0.00085)), rel=1e-6)
    assert bool((ms.sigmas[1:] > ms.sigmas[:-1]).all())


def test_timestep_is_nearest_index_in_log_space(ms: ModelSampling) -> None:
    t = ms.timestep(torch.stack([ms.sigma_max, ms.sigma_min, ms.sigmas[500]]))
    assert t.dtype == torch.float32
    assert t.tolist() == [999.0, 0.0, 500.0]
    # Halfway in log space between two neighbours rounds to one of them; slightly off goes to the nearest.
    between = (ms.log_sigmas[300] * 0.7 + ms.log_sigmas[301] * 0.3).exp()
    assert float(ms.timestep(between.reshape(1))) == 300.0
    assert ms.timestep(torch.tensor(3.0)).shape == ()


def test_sigma_interpolates_log_sigma_linearly(ms: ModelSampling) -> None:
    torch.testing.assert_close(ms.sigma(torch.tensor([0.0, 999.0, 250.0])), ms.sigmas[[0, 999, 250]])
    mid = ms.sigma(torch.tensor(100.25))
    expected = (0.75 * ms.log_sigmas[100] + 0.25 * ms.log_sigmas[101]).exp()
    torch.testing.assert_close(mid, expected)
    torch.testing.assert_close(ms.sigma(torch.tensor(5000.0)), ms.sigma_max)  # clamped


def test_percent_to_sigma(ms: ModelSampling) -> None:
    assert ms.percent_to_sigma(0.0) == 999999999.9
    assert ms.percent_to_sigma(-1.0) == 999999999.9
    assert ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(float(ms.sigma(torch.tensor(499.5))), rel=1e-6)
    assert ms.percent_to_sigma(0.2) > ms.percent_to_sigma(0.8)


def test_eps_scalings(ms: ModelSampling) -> None:
    sigma = torch.tensor([2.0, 0.5])
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    x = x0 + eps * sigma.view(2, 1, 1, 1)
    torch.testing.assert_close(ms.calculate_input(sigma, x), x / (sigma.view(2, 1, 1, 1) ** 2 + 1).sqrt())
    torch.testing.assert_close(ms.calculate_denoised(sigma, eps, x), x0)
    latent = torch.ones(2, 4, 4, 4)
    torch.testing.assert_close(ms.noise_scaling(sigma, eps, latent), latent + eps * sigma.view(2, 1, 1, 1))
    torch.testing.assert_close(
        ms.noise_scaling(torch.tensor(3.0), eps, latent, max_denoise=True), latent + eps * math.sqrt(10.0)
    )
    assert ms.inverse_noise_scaling(sigma, x) is x


def test_v_prediction_recovers_x0() -> None:
    ms = ModelSampling.from_betas("v_prediction")
    sigma = torch.tensor([5.0, 0.3, 1.0])
    s = sigma.view(3, 1, 1, 1)
    x0 = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    x = x0 + eps * s
    # v = alpha eps - sigma_vp x0 with alpha = 1/sqrt(1+s^2), sigma_vp = s/sqrt(1+s^2) (Salimans & Ho 2022).
    v = (eps - s * x0) / (1 + s**2).sqrt()
    torch.testing.assert_close(ms.calculate_denoised(sigma, v, x), x0, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        ModelSampling.from_betas("velocity")  # not a prediction Loom knows


def test_zero_terminal_snr_makes_the_last_sigma_huge(ms: ModelSampling) -> None:
    zsnr = ModelSampling.from_betas(zsnr=True)
    assert float(zsnr.sigma_max) == pytest.approx((1 / 4.8973451890853435e-08 - 1) ** 0.5, rel=1e-5)
    assert float(zsnr.sigma_min) == pytest.approx(float(ms.sigma_min), rel=1e-4)
    sigmas = calculate_sigmas(zsnr, "karras", 10)
    assert len(sigmas) == 11 and float(sigmas[-1]) == 0.0


def test_is_max_denoise(ms: ModelSampling) -> None:
    assert is_max_denoise(ms, torch.tensor([float(ms.sigma_max) * (1 - 1e-6), 1.0, 0.0]))
    assert is_max_denoise(ms, torch.tensor([20.0, 0.0]))
    assert not is_max_denoise(ms, torch.tensor([7.0, 0.0]))


# Schedules -----------------------------------------------------------------------------------------


def test_sd15_normal_10_steps(ms: ModelSampling) -> None:
    sigmas = calculate_sigmas(ms, "normal", 10)
    torch.testing.assert_close(sigmas, torch.tensor(SD15_NORMAL_10), rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 20, 50])
def test_every_scheduler_gives_steps_plus_one_decreasing_sigmas(ms: ModelSampling, name: str, steps: int) -> None:
    sigmas = calculate_sigmas(ms, name, steps)
    assert sigmas.dtype == torch.float32
    assert sigmas.shape == (steps + 1,)
    assert float(sigmas[-1]) == 0.0
    assert bool((sigmas[:-1] > sigmas[1:]).all()), sigmas
    assert float(sigmas[0]) <= float(ms.sigma_max) * (1 + 1e-6)


def test_ddim_uniform_keeps_comfyui_step_count_quirk(ms: ModelSampling) -> None:
    # k = 1000 // 7 = 142 and sigmas 1, 143, ..., 995 are 8 values: 7 requested steps sample 8.
    sigmas = calculate_sigmas(ms, "ddim_uniform", 7)
    assert len(sigmas) == 9
    torch.testing.assert_close(sigmas[:-1], ms.sigmas[1::142].flip(0))


def test_simple_and_sgm_uniform(ms: ModelSampling) -> None:
    simple = calculate_sigmas(ms, "simple", 4)
    torch.testing.assert_close(simple[:-1], ms.sigmas[[999, 749, 499, 249]])
    sgm = calculate_sigmas(ms, "sgm_uniform", 4)
    torch.testing.assert_close(sgm[:-1], ms.sigma(torch.tensor([999.0, 749.25, 499.5, 249.75])))


def test_karras_endpoints_and_rho(ms: ModelSampling) -> None:
    sigmas = calculate_sigmas(ms, "karras", 12)
    assert float(sigmas[0]) == pytest.approx(float(ms.sigma_max), rel=1e-6)
    assert float(sigmas[-2]) == pytest.approx(float(ms.sigma_min), rel=1e-5)
    steps = sigmas[:-1] ** (1 / 7)
    diffs = steps[1:] - steps[:-1]
    torch.testing.assert_close(diffs, diffs.mean().expand_as(diffs), atol=1e-5, rtol=0)
    linear = get_sigmas_karras(12, 0.1, 10.0, rho=1.0)[:-1]
    torch.testing.assert_close(linear, torch.linspace(10.0, 0.1, 12))
    # A larger rho spends more steps at low noise.
    assert float(get_sigmas_karras(12, 0.1, 10.0, rho=7.0)[6]) < float(get_sigmas_karras(12, 0.1, 10.0, rho=3.0)[6])


def test_exponential_is_uniform_in_log_sigma(ms: ModelSampling) -> None:
    sigmas = calculate_sigmas(ms, "exponential", 9)[:-1]
    diffs = sigmas.log().diff()
    torch.testing.assert_close(diffs, diffs.mean().expand_as(diffs), atol=1e-5, rtol=0)
    assert float(sigmas[0]) == pytest.approx(float(ms.sigma_max), rel=1e-5)
    assert float(sigmas[-1]) == pytest.approx(float(ms.sigma_min), rel=1e-5)


def test_beta_scheduler_is_symmetric_in_timesteps(ms: ModelSampling) -> None:
    sigmas = calculate_sigmas(ms, "beta", 10)
    timesteps = ms.timestep(sigmas[:-1])
    assert float(timesteps[0]) == 999.0
    # Beta(0.6, 0.6) is symmetric: the quantiles at 1 - i/10 mirror around 0.5.
    assert timesteps[1:].tolist() == pytest.approx((999 - timesteps[1:]).flip(0).tolist(), abs=1.0)


def test_unknown_scheduler_is_an_error(ms: ModelSampling) -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        calculate_sigmas(ms, "nope", 10)


# sigmas_for: denoise, KSamplerAdvanced slicing, penultimate discarding ------------------------------


def test_sigmas_for_full_denoise(ms: ModelSampling) -> None:
    torch.testing.assert_close(sigmas_for(ms, "normal", "euler", 10), calculate_sigmas(ms, "normal", 10))
    torch.testing.assert_close(
        sigmas_for(ms, "karras", "euler", 10, denoise=0.99995), calculate_sigmas(ms, "karras", 10)
    )


@pytest.mark.parametrize(("steps", "denoise", "total"), [(10, 0.5, 20), (20, 0.75, 26), (7, 0.3, 23)])
def test_sigmas_for_partial_denoise(ms: ModelSampling, steps: int, denoise: float, total: int) -> None:
    sigmas = sigmas_for(ms, "karras", "euler", steps, denoise=denoise)
    assert len(sigmas) == steps + 1
    torch.testing.assert_close(sigmas, calculate_sigmas(ms, "karras", total)[-(steps + 1) :])
    assert float(sigmas[0]) < float(ms.sigma_max)


def test_sigmas_for_zero_denoise_is_empty(ms: ModelSampling) -> None:
    assert sigmas_for(ms, "normal", "euler", 10, denoise=0.0).numel() == 0


def test_sigmas_for_start_and_end_steps(ms: ModelSampling) -> None:
    full = calculate_sigmas(ms, "normal", 20)
    window = sigmas_for(ms, "normal", "euler", 20, start_step=5, last_step=12)
    torch.testing.assert_close(window, full[5:13])
    assert float(window[-1]) > 0  # return_with_leftover_noise = enable
    closed = sigmas_for(ms, "normal", "euler", 20, start_step=5, last_step=12, force_full_denoise=True)
    assert len(closed) == 8 and float(closed[-1]) == 0.0
    torch.testing.assert_close(closed[:-1], full[5:12])
    # end_at_step past the end changes nothing, not even with force_full_denoise.
    torch.testing.assert_close(sigmas_for(ms, "normal", "euler", 20, last_step=10000, force_full_denoise=True), full)
    # start_at_step at or past the last step: nothing to sample.
    assert sigmas_for(ms, "normal", "euler", 20, start_step=20).numel() == 0
    assert sigmas_for(ms, "normal", "euler", 20, start_step=5, last_step=5).numel() == 0


@pytest.mark.parametrize("sampler", sorted(DISCARD_PENULTIMATE_SIGMA_SAMPLERS))
def test_discard_penultimate_samplers(ms: ModelSampling, sampler: str) -> None:
    sigmas = sigmas_for(ms, "karras", sampler, 10)
    longer = calculate_sigmas(ms, "karras", 11)
    assert len(sigmas) == 11
    torch.testing.assert_close(sigmas, torch.cat([longer[:-2], longer[-1:]]))
    assert not torch.equal(sigmas, calculate_sigmas(ms, "karras", 10))


def test_penultimate_discard_applies_before_denoise_slicing(ms: ModelSampling) -> None:
    sigmas = sigmas_for(ms, "normal", "dpm_2", 10, denoise=0.5)
    longer = calculate_sigmas(ms, "normal", 21)
    torch.testing.assert_close(sigmas, torch.cat([longer[:-2], longer[-1:]])[-11:])
