"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance"):
euler_cfg_pp, euler_ancestral_cfg_pp, dpmpp_2s_ancestral_cfg_pp and dpmpp_2m_cfg_pp.

A CFG++ step moves to the guided ``denoised`` estimate but re-noises along the *unconditional*
direction ``(x - uncond_denoised) / sigma``, which keeps the guided sample on the data manifold and
makes small cfg scales (about 0..2) work. The uncond prediction comes from the guided denoiser's
``on_guidance`` observer (:class:`~engine.backend.samplers.common.UncondTracker`). Formulas follow
ComfyUI's eps / v-prediction (alpha = 1) form.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import (
    Callback,
    Denoiser,
    UncondTracker,
    _noise_sampler,
    _report,
    _sigma_fn,
    _t_fn,
    get_ancestral_step,
    to_d,
)


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Euler ancestral with CFG++: ``x = denoised + sigma_down * (x - uncond) / sigma + sigma_up * noise``."""
    tracker = UncondTracker()
    extra = tracker.extra_args(extra_args)
    draw = _noise_sampler(x, seed, noise_sampler) if eta > 0 and s_noise > 0 else None
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        uncond = tracker.latest(denoised)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        d = to_d(x, sigmas[i], uncond)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + d * sigma_down
        if draw is not None:
            x = x + draw(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler with CFG++ (deterministic): ``x = denoised + sigma_next * (x - uncond) / sigma``."""
    return sample_euler_ancestral_cfg_pp(
        model, x, sigmas, extra_args=extra_args, callback=callback, eta=0.0, s_noise=0.0
    )


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver++(2S) ancestral with CFG++: both stages step with the uncond predictions, then the
    step's guidance vector ``denoised - uncond`` (of its first evaluation) is added back."""
    tracker = UncondTracker()
    extra = tracker.extra_args(extra_args)
    draw = _noise_sampler(x, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        uncond = tracker.latest(denoised)
        guidance = denoised - uncond
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], uncond) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * 0.5).expm1() * uncond
            denoised_2 = model(x_2, _sigma_fn(s) * s_in, **extra)
            uncond_2 = tracker.latest(denoised_2)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * uncond_2
        if sigmas[i + 1] > 0:
            x = x + draw(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        x = x + guidance
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) with CFG++: ``x = denoised + e^-h (x - uncond) - expm1(-h) / (2r) (denoised -
    previous uncond)`` with h the step in -log sigma and r the ratio of the previous step to this one."""
    tracker = UncondTracker()
    extra = tracker.extra_args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    old_uncond: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        uncond = tracker.latest(denoised)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = _t_fn(sigmas[i + 1]) - _t_fn(sigmas[i])
        mix = -torch.exp(-h) * uncond
        if old_uncond is not None:
            r = (_t_fn(sigmas[i]) - _t_fn(sigmas[i - 1])) / h
            mix = mix - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x
