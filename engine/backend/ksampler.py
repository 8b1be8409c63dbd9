"""One KSampler run: :func:`ksample` strings the model sampling (:mod:`engine.backend.model_sampling`),
the sigma schedule (:mod:`engine.backend.schedules`) and a sampler (:mod:`engine.backend.samplers`)
together as ComfyUI's KSampler does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from engine.backend import noise as noise_mod
from engine.backend.guidance import InpaintDenoiser
from engine.backend.model_sampling import ModelSampling, is_max_denoise
from engine.backend.noise import SeededNoiseSampler
from engine.backend.samplers import _SAMPLERS, RANDOM_INPAINT_NOISE_SAMPLERS, Sampler, get_sampler
from engine.backend.samplers.common import Callback, Denoiser


def ksample(
    model: Denoiser,
    model_sampling: ModelSampling,
    sampler_name: str,
    sigmas: Tensor,
    noise: Tensor,
    latent_image: Tensor,
    *,
    seed: int | None,
    denoise_mask: Tensor | None = None,
    callback: Callback | None = None,
    extra_args: dict[str, Any] | None = None,
    sampler_options: dict[str, Any] | None = None,
    device_rng: bool = False,
    denoise_mask_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    sampler: Sampler | None = None,
) -> Tensor:
    """One KSampler run as ComfyUI performs it, on model-space latents.

    ``model`` is the guided denoiser (e.g. a ``CFGDenoiser``); ``noise`` the seed noise (zeros for
    add_noise = disable), ``latent_image`` the input latent already in the model's latent space (the
    caller applies the latent format's scale before and after), ``denoise_mask`` the prepared mask
    (``guidance.prepare_mask``) or None. Steps:

    1. no sigmas -> ``latent_image`` is returned unchanged;
    2. with a mask, the denoiser is wrapped in ``InpaintDenoiser``; ``ddim`` re-noises the kept region
       with fresh noise from seed + 1, every other sampler with ``noise``;
    3. x = noise_scaling(sigmas[0], noise, latent_image, max_denoise) (sqrt(1 + sigma^2) scaling when
       starting from sigma_max);
    4. the sampler runs with per-step noise seeded by ``seed``; inverse_noise_scaling is applied.

    ``device_rng=True`` draws the ancestral samplers' per-step noise on the sampling device as ComfyUI
    does (GPU parity with ComfyUI, device-dependent); the default draws it on the CPU. ``sampler`` is the
    sampler function when the caller resolved it already (``sampler_name`` then only names it).
    """
    if sigmas.numel() == 0:
        return latent_image
    sigmas = sigmas.to(noise.device)
    if denoise_mask is not None:
        mask_noise = noise
        if sampler_name in RANDOM_INPAINT_NOISE_SAMPLERS:
            mask_noise = noise_mod.inpaint_noise(noise.shape, 41 if seed is None else seed)
            mask_noise = mask_noise.to(device=noise.device, dtype=noise.dtype)
        model = InpaintDenoiser(
            model,
            latent_image,
            denoise_mask,
            mask_noise,
            noise_scaling=lambda sigma, n, latent: model_sampling.noise_scaling(sigma, n, latent),
            mask_fn=denoise_mask_fn,
            sigmas=sigmas,
        )
    x = model_sampling.noise_scaling(sigmas[0], noise, latent_image, is_max_denoise(model_sampling, sigmas))
    if sampler is None:
        sampler = get_sampler(sampler_name)
    noise_sampler = None
    entry = _SAMPLERS.get(sampler_name)
    if device_rng and entry is not None and entry.noise == "seeded":
        noise_sampler = SeededNoiseSampler(x, seed, device_rng=True)
    samples = sampler(
        model,
        x,
        sigmas,
        extra_args=extra_args,
        callback=callback,
        seed=seed,
        noise_sampler=noise_sampler,
        **(sampler_options or {}),
    )
    return model_sampling.inverse_noise_scaling(sigmas[-1], samples)
