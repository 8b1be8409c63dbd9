"""Model-sampling kinds (LCM, x0, img_to_img, zsnr, continuous EDM and V) against the published
formulas and diffusers' schedulers, and Epsilon Scaling's post-CFG hook."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import EDMEulerScheduler, LCMScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

from engine.backend.epsilon_scaling import EpsilonScaling
from engine.backend.guidance import gather_hooks
from engine.backend.model_sampling import (
    ContinuousEDMSampling,
    ContinuousVSampling,
    DistilledModelSampling,
    ModelSampling,
    model_sampling_for,
)
from engine.backend.schedules import calculate_sigmas
from engine.models.handles import ModelSamplingSpec

SIGMA = torch.tensor([14.0, 3.0, 0.5, 0.05])


def _pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)


def _col(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


# Defaults and choices -------------------------------------------------------------------------------


def test_no_spec_is_the_checkpoints_own_sampling() -> None:
    eps, v = model_sampling_for("eps"), model_sampling_for("v")
    assert eps.prediction == "eps" and v.prediction == "v_prediction"
    torch.testing.assert_close(eps.sigmas, ModelSampling.from_betas().sigmas)
    spec = ModelSamplingSpec(prediction="v_prediction")
    assert model_sampling_for("eps", spec).prediction == "v_prediction"  # a node's choice wins
    with pytest.raises(ValueError, match="kind"):
        model_sampling_for("eps", ModelSamplingSpec(kind="flow"))


# LCM ------------------------------------------------------------------------------------------------


def test_lcm_keeps_lcm_schedulers_50_timesteps() -> None:
    ms = model_sampling_for("eps", ModelSamplingSpec(prediction="lcm"))
    assert isinstance(ms, DistilledModelSampling) and len(ms.sigmas) == 50
    reference = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             original_inference_steps=50)
    reference.set_timesteps(50)  # every one of LCM's 50 distillation timesteps: 999, 979, ..., 19
    timesteps = sorted(int(t) for t in reference.timesteps)
    assert timesteps == [20 * k + 19 for k in range(50)]
    full = ModelSampling.from_betas().sigmas
    torch.testing.assert_close(ms.sigmas, full[timesteps])
    assert ms.timestep(ms.sigmas).tolist() == timesteps
    torch.testing.assert_close(ms.sigma(torch.tensor([19.0, 999.0, 29.0])),
                               torch.stack([full[19], full[999], (full[19] * full[39]).sqrt()]))
    assert ms.percent_to_sigma(0.0) > 1e8 and ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(float(ms.sigma(torch.tensor(499.5))))


def test_lcm_boundary_condition_denoise() -> None:
    ms = model_sampling_for("eps", ModelSamplingSpec(prediction="lcm"))
    reference = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sigma = ms.sigmas[[49, 20, 3, 0]]
    x, eps = _pair(1)
    denoised = ms.calculate_denoised(sigma, eps, x)
    for i, t in enumerate(ms.timestep(sigma).tolist()):
        c_skip, c_out = reference.get_scalings_for_boundary_condition_discrete(int(t))
        expected = c_out * (x[i] - eps[i] * sigma[i]) + c_skip * x[i]
        torch.testing.assert_close(denoised[i], expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ms.calculate_input(sigma, x), x / _col(sigma**2 + 1).sqrt())


def test_lcm_sampler_shape_runs_on_lcm_sigmas() -> None:
    ms = model_sampling_for("eps", ModelSamplingSpec(prediction="lcm"))
    sigmas = calculate_sigmas(ms, "sgm_uniform", 4)
    t = ms.timestep(sigmas[:-1]).tolist()
    assert t[0] == 999.0 and all(int(v) % 20 == 19 for v in t)


# x0, img_to_img -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["x0", "img_to_img"])
def test_x0_output_is_the_denoised_latent(kind: str) -> None:
    ms = model_sampling_for("eps", ModelSamplingSpec(prediction=kind))
    x, out = _pair(2)
    assert ms.calculate_denoised(SIGMA, out, x) is out
    scaled = ms.calculate_input(SIGMA, x)
    if kind == "img_to_img":
        assert scaled is x
    else:
        torch.testing.assert_close(scaled, x / _col(SIGMA**2 + 1).sqrt())


# zsnr -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["v_prediction", "lcm"])
def test_zsnr_matches_diffusers_rescale_zero_terminal_snr(prediction: str) -> None:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_bar = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    expected = ((1 - alphas_bar) / alphas_bar).sqrt()
    ms = model_sampling_for("eps", ModelSamplingSpec(prediction=prediction, zsnr=True))
    full = ms.sigmas if prediction != "lcm" else None
    if full is None:
        torch.testing.assert_close(ms.sigmas[:-1].double(), expected[19:980:20], rtol=1e-5, atol=0)
        return
    torch.testing.assert_close(full[:-1].double(), expected[:-1], rtol=1e-5, atol=0)
    assert float(full[-1]) == pytest.approx(math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08), rel=1e-5)


# Continuous EDM and V -------------------------------------------------------------------------------


def test_continuous_edm_sigmas_and_timesteps() -> None:
    ms = model_sampling_for("eps", ModelSamplingSpec(kind="continuous_edm", prediction="edm", sigma_min=0.002,
                                                     sigma_max=120.0, sigma_data=0.5))
    assert isinstance(ms, ContinuousEDMSampling) and len(ms.sigmas) == 1000
    np.testing.assert_allclose(ms.sigmas.double().numpy(), np.geomspace(0.002, 120.0, 1000), rtol=1e-5)
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=120.0, sigma_data=0.5)
    torch.testing.assert_close(ms.timestep(SIGMA), scheduler.precondition_noise(SIGMA))  # c_noise = log(sigma) / 4
    torch.testing.assert_close(ms.sigma(ms.timestep(SIGMA)), SIGMA)
    assert ms.percent_to_sigma(0.5) == pytest.approx(math.sqrt(0.002 * 120.0), rel=1e-5)
    assert ms.percent_to_sigma(0.0) > 1e8 and ms.percent_to_sigma(1.0) == 0.0


@pytest.mark.parametrize(("prediction", "diffusers_type"), [("edm", "epsilon"), ("v_prediction", "v_prediction")])
def test_continuous_edm_preconditioning_matches_diffusers(prediction: str, diffusers_type: str) -> None:
    sigma_data = 0.5 if prediction == "edm" else 1.0
    ms = model_sampling_for("eps", ModelSamplingSpec(kind="continuous_edm", prediction=prediction, sigma_min=0.002,
                                                     sigma_max=120.0, sigma_data=sigma_data))
    scheduler = EDMEulerScheduler(sigma_data=sigma_data, prediction_type=diffusers_type)
    x, out = _pair(3)
    for i in range(4):
        s = SIGMA[i]
        expected = scheduler.precondition_outputs(x[i], out[i], s)
        torch.testing.assert_close(ms.calculate_denoised(SIGMA, out, x)[i], expected)
        torch.testing.assert_close(ms.calculate_input(SIGMA, x)[i], scheduler.precondition_inputs(x[i], s))


def test_edm_denoise_is_karras_table_1() -> None:
    ms = ContinuousEDMSampling(0.002, 80.0, 0.5, "edm")
    x, f = _pair(4)
    s = _col(SIGMA)
    expected = 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * f  # c_skip x + c_out F
    torch.testing.assert_close(ms.calculate_denoised(SIGMA, f, x), expected)


def test_continuous_v_timesteps_and_v_denoise() -> None:
    ms = model_sampling_for("v", ModelSamplingSpec(kind="continuous_v", prediction="v_prediction", sigma_min=0.03,
                                                   sigma_max=500.0))
    assert isinstance(ms, ContinuousVSampling)
    assert float(ms.sigma_min) == pytest.approx(0.03, rel=1e-5)
    assert float(ms.sigma_max) == pytest.approx(500.0, rel=1e-5)
    angle = torch.atan(SIGMA)  # v-diffusion's phi: alpha = cos(phi), sigma_vp = sin(phi)
    torch.testing.assert_close(ms.timestep(SIGMA), angle / (math.pi / 2))
    torch.testing.assert_close(ms.sigma(ms.timestep(SIGMA)), SIGMA, rtol=1e-5, atol=1e-6)
    x0, eps = _pair(5)
    s = _col(SIGMA)
    v = (eps - s * x0) / (1 + s**2).sqrt()  # Salimans & Ho 2022: v = alpha eps - sigma_vp x0
    torch.testing.assert_close(ms.calculate_denoised(SIGMA, v, x0 + s * eps), x0, rtol=1e-4, atol=1e-4)
    sigmas = calculate_sigmas(ms, "karras", 5)
    assert float(sigmas[0]) == pytest.approx(500.0, rel=1e-5) and float(sigmas[-1]) == 0.0


def test_continuous_needs_a_range() -> None:
    with pytest.raises(ValueError, match="sigma_min"):
        model_sampling_for("eps", ModelSamplingSpec(kind="continuous_edm", prediction="edm"))
    with pytest.raises(ValueError, match="sigma_min"):
        ContinuousEDMSampling(0.0, 120.0)


def test_to_keeps_the_kind() -> None:
    ms = model_sampling_for("eps", ModelSamplingSpec(prediction="lcm")).to("cpu")
    assert isinstance(ms, DistilledModelSampling) and ms.skip_steps == 20


# Epsilon Scaling ------------------------------------------------------------------------------------


def test_epsilon_scaling_scales_the_noise_prediction() -> None:
    patch = EpsilonScaling(1.005)
    hooks = gather_hooks([patch], ModelSampling.from_betas())
    assert hooks.post_cfg == [patch.rescale]
    x, denoised = _pair(6)
    out = hooks.post_cfg[0](SimpleNamespace(x=x), denoised)  # type: ignore[arg-type]
    torch.testing.assert_close((x - out) * 1.005, x - denoised)
    assert EpsilonScaling(1.005) == patch and hash(patch) == hash(EpsilonScaling(1.005))
