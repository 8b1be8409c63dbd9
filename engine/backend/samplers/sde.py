"""DPM-Solver++ SDE samplers with Brownian-tree noise: dpmpp_sde, dpmpp_2m_sde (midpoint / heun) and
dpmpp_3m_sde, and their ``*_gpu`` forms (Brownian tree on the sampling device)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.common import (
    Callback,
    Denoiser,
    _brownian_sampler,
    _report,
    _sigma_fn,
    _t_fn,
    get_ancestral_step,
)


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Stochastic DPM-Solver++ with a midpoint at fraction ``r`` of the step in log sigma (Lu et al.
    2022, "DPM-Solver++", with the SDE noise split of Karras et al. 2022; Brownian-tree noise)."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian_sampler(x, sigmas, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        sigma_s = _sigma_fn(s)
        # Step 1: to the intermediate sigma.
        sd, su = get_ancestral_step(sigmas[i], sigma_s, eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / sigmas[i]) * x - (t - s_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + noise_sampler(sigmas[i], sigma_s) * s_noise * su
        denoised_2 = model(x_2, sigma_s * s_in, **extra_args)
        # Step 2: the full step with the combined prediction.
        sd, su = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / sigmas[i]) * x - (t - t_next_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", Sec. 5 / Appendix: the data-prediction
    SDE solver), second-order ``midpoint`` or ``heun`` correction; Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian_sampler(x, sigmas, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    old_denoised: Tensor | None = None
    h_last: Tensor | None = None
    h: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t_fn(sigmas[i + 1]) - _t_fn(sigmas[i])
            h_eta = h * (eta + 1)
            phi_1 = (-h_eta).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + phi_1 * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi_1 / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi_1 * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * scale
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model: Denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """:func:`sample_dpmpp_2m_sde` with ``solver_type="heun"``."""
    return sample_dpmpp_2m_sde(model, x, sigmas, solver_type="heun", **kwargs)


@torch.no_grad()
def sample_dpmpp_3m_sde(
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
    """DPM-Solver++(3M) SDE: the third-order multistep data-prediction solver of Lu et al. 2022
    ("DPM-Solver++", Appendix; exponential integrator with phi_2 / phi_3 terms, Hochbruck & Ostermann
    2010), with the SDE noise term; Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian_sampler(x, sigmas, seed, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    denoised_1: Tensor | None = None
    denoised_2: Tensor | None = None
    h: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t_fn(sigmas[i + 1]) - _t_fn(sigmas[i])
            h_eta = h * (eta + 1)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None and denoised_1 is not None and denoised_2 is not None and h_1 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta > 0 and s_noise > 0:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * scale
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _on_device(fn: Callable[..., Tensor], name: str) -> Callable[..., Tensor]:
    """The ``*_gpu`` form of an SDE sampler: the same math with the Brownian tree on ``x``'s device."""

    @torch.no_grad()
    def sample(
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        noise_sampler: NoiseSampler | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Tensor:
        if len(sigmas) <= 1:
            return x
        noise_sampler = _brownian_sampler(x, sigmas, seed, noise_sampler, cpu=False)
        return fn(model, x, sigmas, noise_sampler=noise_sampler, **kwargs)

    sample.__name__ = name
    sample.__doc__ = (
        f":func:`{fn.__name__}` with its Brownian tree built on the sampling device and drawn with that "
        "device's RNG, as ComfyUI's ``_gpu`` samplers. On the CPU it equals the CPU variant bit for bit; "
        "on a GPU the noise (so the image) differs from the CPU variant's and can differ between GPU "
        "models, drivers and torch versions."
    )
    return sample


sample_dpmpp_sde_gpu = _on_device(sample_dpmpp_sde, "sample_dpmpp_sde_gpu")
sample_dpmpp_2m_sde_gpu = _on_device(sample_dpmpp_2m_sde, "sample_dpmpp_2m_sde_gpu")
sample_dpmpp_2m_sde_heun_gpu = _on_device(sample_dpmpp_2m_sde_heun, "sample_dpmpp_2m_sde_heun_gpu")
sample_dpmpp_3m_sde_gpu = _on_device(sample_dpmpp_3m_sde, "sample_dpmpp_3m_sde_gpu")
