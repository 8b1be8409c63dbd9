"""ksample: one KSampler run as ComfyUI strings noise scaling, inpainting and the sampler together."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from engine.backend.guidance import prepare_mask
from engine.backend.ksampler import ksample
from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import inpaint_noise, prepare_noise
from engine.backend.schedules import sigmas_for


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas()


class Recorder:
    def __init__(self) -> None:
        self.inputs: list[tuple[Tensor, Tensor]] = []

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.inputs.append((x.clone(), sigma.clone()))
        return x * 0.1


def test_no_sigmas_returns_the_latent(ms: ModelSampling) -> None:
    latent = torch.ones(1, 4, 8, 8)
    out = ksample(Recorder(), ms, "euler", torch.zeros(0), torch.zeros(1, 4, 8, 8), latent, seed=1)
    assert out is latent


def test_txt2img_starts_at_sqrt_one_plus_sigma_squared(ms: ModelSampling) -> None:
    latent = torch.zeros(1, 4, 8, 8)
    noise = prepare_noise(latent, 5)
    sigmas = sigmas_for(ms, "normal", "euler", 4)
    model = Recorder()
    ksample(model, ms, "euler", sigmas, noise, latent, seed=5)
    first_x, first_sigma = model.inputs[0]
    torch.testing.assert_close(first_x, noise * math.sqrt(1 + float(sigmas[0]) ** 2))
    assert first_sigma.shape == (1,)


def test_img2img_starts_at_latent_plus_sigma_noise(ms: ModelSampling) -> None:
    latent = torch.full((1, 4, 8, 8), 0.3)
    noise = prepare_noise(latent, 5)
    sigmas = sigmas_for(ms, "normal", "euler", 4, denoise=0.5)
    model = Recorder()
    ksample(model, ms, "euler", sigmas, noise, latent, seed=5)
    torch.testing.assert_close(model.inputs[0][0], latent + noise * float(sigmas[0]))


@pytest.mark.parametrize(("sampler", "random_noise"), [("euler", False), ("ddim", True)])
def test_inpainting_renoises_the_kept_region(ms: ModelSampling, sampler: str, random_noise: bool) -> None:
    latent = torch.full((1, 4, 8, 8), 0.7)
    noise = prepare_noise(latent, 9)
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :8] = 1.0  # regenerate the left half
    denoise_mask = prepare_mask(mask, latent.shape)
    sigmas = sigmas_for(ms, "karras", sampler, 5)
    model = Recorder()
    out = ksample(model, ms, sampler, sigmas, noise, latent, seed=9, denoise_mask=denoise_mask)
    kept_noise = inpaint_noise(latent.shape, 9) if random_noise else noise
    for x, sigma in model.inputs:
        torch.testing.assert_close(x[..., 4:], latent[..., 4:] + kept_noise[..., 4:] * float(sigma[0]))
    torch.testing.assert_close(out[..., 4:], latent[..., 4:], atol=1e-5, rtol=0)


def test_sampler_options_reach_the_sampler(ms: ModelSampling) -> None:
    latent = torch.zeros(1, 4, 8, 8)
    noise = prepare_noise(latent, 2)
    sigmas = sigmas_for(ms, "karras", "euler_ancestral", 6)
    deterministic = ksample(
        Recorder(), ms, "euler_ancestral", sigmas, noise, latent, seed=2, sampler_options={"eta": 0.0}
    )
    euler = ksample(Recorder(), ms, "euler", sigmas, noise, latent, seed=2)
    torch.testing.assert_close(deterministic, euler)


def test_device_rng_is_the_same_stream_on_cpu(ms: ModelSampling) -> None:
    latent = torch.zeros(1, 4, 8, 8)
    noise = prepare_noise(latent, 4)
    sigmas = sigmas_for(ms, "karras", "euler_ancestral", 6)
    a = ksample(Recorder(), ms, "euler_ancestral", sigmas, noise, latent, seed=4)
    b = ksample(Recorder(), ms, "euler_ancestral", sigmas, noise, latent, seed=4, device_rng=True)
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_2m"])
def test_cpu_and_cuda_runs_agree(ms: ModelSampling, sampler: str) -> None:
    latent = torch.zeros(2, 4, 16, 16)
    noise = prepare_noise(latent, 77)
    sigmas = sigmas_for(ms, "karras", sampler, 12)

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.reshape(-1, 1, 1, 1)
        return (x * 0.36 + 0.5 * s**2) / (0.36 + s**2)

    cpu = ksample(model, ms, sampler, sigmas, noise, latent, seed=77)
    cuda = ksample(model, ms, sampler, sigmas.cuda(), noise.cuda(), latent.cuda(), seed=77)
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=1e-4)
