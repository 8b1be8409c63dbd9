"""Rectified-flow model sampling (SD3, AuraFlow, Flux; ComfyUI's CONST prediction): noise levels against
diffusers' FlowMatchEulerDiscreteScheduler, the flow scalings, and every sampler and scheduler recovering the
clean latent from an exact velocity model (the model-sampling layer is the only thing that knows it is flow)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.backend.guidance import ParameterizedModel
from engine.backend.ksampler import ksample
from engine.backend.model_sampling import (
    DiscreteFlowSampling,
    FluxSampling,
    Prediction,
    flux_shift,
    model_sampling_for,
)
from engine.backend.schedules import calculate_sigmas
from engine.models.handles import ModelSamplingSpec


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_sd3_noise_levels_equal_diffusers_flow_matching_schedule(shift: float) -> None:
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ours = DiscreteFlowSampling(shift)
    torch.testing.assert_close(ours.sigmas, reference.sigmas.flip(0).float(), atol=1e-6, rtol=0)
    assert float(ours.sigma_max) == pytest.approx(1.0) and ours.prediction is Prediction.FLOW


def test_timesteps_and_percent_follow_the_shift() -> None:
    sd3 = DiscreteFlowSampling(3.0)
    sigma = torch.tensor([0.25, 0.5, 0.9])
    torch.testing.assert_close(sd3.timestep(sigma), sigma * 1000)
    torch.testing.assert_close(sd3.sigma(torch.tensor(500.0)), torch.tensor(3 * 0.5 / (1 + 2 * 0.5)))
    assert sd3.percent_to_sigma(0.0) == 1.0 and sd3.percent_to_sigma(1.0) == 0.0
    assert sd3.percent_to_sigma(0.25) == pytest.approx(3 * 0.75 / (1 + 2 * 0.75))
    aura = DiscreteFlowSampling(1.73, multiplier=1.0)
    torch.testing.assert_close(aura.timestep(sigma), sigma)
    flux = FluxSampling(1.15)
    assert len(flux.sigmas) == 10000 and float(flux.timestep(torch.tensor(0.3))) == pytest.approx(0.3)
    t = 0.4
    assert float(flux.sigma(t)) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + (1 / t - 1)))
    assert flux.percent_to_sigma(0.0) == 1.0 and flux.percent_to_sigma(1.0) == 0.0


def test_flux_shift_grows_with_the_image() -> None:
    assert flux_shift(1.15, 0.5, 1024, 1024) == pytest.approx(1.15)  # 4096 patches: max_shift
    assert flux_shift(1.15, 0.5, 256, 256) == pytest.approx(0.5)  # 256 patches: base_shift
    assert flux_shift(1.15, 0.5, 512, 512) == pytest.approx(0.5 + 768 * 0.65 / 3840)


def test_flow_scalings_interpolate_and_undo() -> None:
    ms = DiscreteFlowSampling(3.0)
    latent, noise = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    x = ms.noise_scaling(torch.tensor([0.3]), noise, latent)
    torch.testing.assert_close(x, 0.3 * noise + 0.7 * latent)
    torch.testing.assert_close(ms.calculate_input(torch.tensor([0.3]), x), x)  # unscaled input
    velocity = noise - latent
    torch.testing.assert_close(ms.calculate_denoised(torch.tensor([0.3]), velocity, x), latent, atol=1e-6, rtol=0)
    torch.testing.assert_close(ms.inverse_noise_scaling(torch.tensor(0.5), latent), latent * 2)


def test_specs_build_the_flow_samplings() -> None:
    sd3 = model_sampling_for("eps", ModelSamplingSpec(kind="discrete_flow", prediction="flow", shift=3.0))
    assert isinstance(sd3, DiscreteFlowSampling) and sd3.shift == 3.0 and sd3.multiplier == 1000.0
    flux = model_sampling_for("eps", ModelSamplingSpec(kind="flux", prediction="flow", shift=1.15))
    assert isinstance(flux, FluxSampling) and flux.shift == 1.15


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "dpmpp_2s_ancestral", "lms", "ddim"])
@pytest.mark.parametrize("scheduler", ["simple", "normal", "beta", "sgm_uniform"])
def test_every_sampler_recovers_the_clean_latent_from_an_exact_velocity_model(sampler: str, scheduler: str) -> None:
    """k-diffusion's samplers step ``x`` with ``(x - denoised) / sigma``, which on a flow model is the velocity:
    an exact velocity model lands on the clean latent."""
    torch.testing.assert_close(_sample_exact_velocity(sampler, scheduler), _clean(), atol=2e-4, rtol=0)


def test_uni_pc_lands_near_the_clean_latent() -> None:
    """UniPC works in the variance-preserving form of sigma (as ComfyUI's does), which a flow latent is not in:
    close, not exact, as in ComfyUI."""
    torch.testing.assert_close(_sample_exact_velocity("uni_pc", "simple"), _clean(), atol=2e-2, rtol=0)


def _clean() -> torch.Tensor:
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))


def _sample_exact_velocity(sampler: str, scheduler: str) -> torch.Tensor:
    clean = _clean()
    ms = DiscreteFlowSampling(3.0)

    def apply_model(x_in: torch.Tensor, timestep: torch.Tensor, conds: list[object]) -> torch.Tensor:
        sigma = (timestep / 1000.0).reshape(-1, 1, 1, 1)  # the network sees sigma * multiplier
        return (x_in - clean.expand_as(x_in)) / sigma  # v = noise - x0, from x = (1 - s) x0 + s noise

    denoiser = ParameterizedModel(apply_model, ms)

    def model(x: torch.Tensor, sigma: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return denoiser(x, sigma, [None])

    sigmas = calculate_sigmas(ms, scheduler, 8)
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    return ksample(model, ms, sampler, sigmas, noise, torch.zeros(1, 16, 8, 8), seed=1)


def test_sd3_and_flux_latent_formats_shift_then_scale() -> None:
    from engine.backend.latent_formats import FLUX, SD3, latent_format

    latent = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(SD3.to_model(latent), (latent - 0.0609) * 1.5305)
    torch.testing.assert_close(FLUX.to_vae(FLUX.to_model(latent)), latent, atol=1e-6, rtol=0)
    assert latent_format("sd3", 0.18215) is SD3 and latent_format(None, 0.18215).shift == 0.0
