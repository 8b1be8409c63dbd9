"""Guidance patches a MODEL handle carries: RescaleCFG, CFGZeroStar, CFGNorm, APG, TCFG, Mahiro, FreSca,
PerpNeg and DifferentialDiffusion, with ComfyUI's maths.

Each patch is a frozen, picklable dataclass with ``install(hooks, model_sampling)`` (see
:class:`engine.backend.guidance.SamplingPatch`); it adds hooks to the :class:`GuidanceHooks` of one
sampling run and touches nothing global, so a handle without the patch samples exactly as before.
Hooks of several patches run in install order (the order of the MODEL's patch nodes), like
ComfyUI's pre-/post-CFG function lists. A cfg function *replaces* CFG: when two patches set one
(RescaleCFG, PerpNeg) the last one installed wins, as ComfyUI's ``set_model_sampler_cfg_function``.

Everything works on *denoised* predictions. ComfyUI's cfg functions take "noise-like" values
(``x - denoised``) and return ``x - result``; the formulas below are those translated. Where the
uncond pass was skipped (cfg 1) ComfyUI hands its hooks an all-zero uncond prediction; these hooks
do the same, except TCFG and FreSca, which (as ComfyUI's) then leave the predictions alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .guidance import GuidanceHooks, GuidanceStep, StepPreCfg


def _per_sample(sigma: Tensor, like: Tensor) -> Tensor:
    """``sigma`` [B] shaped to broadcast against ``like`` [B, ...]."""
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1)).to(like.dtype)


def _uncond_or_zeros(step: GuidanceStep) -> Tensor:
    """The uncond prediction, or zeros when cfg 1 skipped it (what ComfyUI's hooks then see)."""
    if step.uncond_denoised is not None:
        return step.uncond_denoised
    return torch.zeros_like(step.cond_denoised)


def _feature_dims(t: Tensor) -> tuple[int, ...]:
    return tuple(range(1, t.ndim))


# RescaleCFG (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.4)

def rescale_cfg(x: Tensor, sigma: Tensor, cond: Tensor, uncond: Tensor, cfg_scale: float,
                multiplier: float) -> Tensor:
    """CFG done on v-predictions, its std rescaled to the cond's, mixed by ``multiplier``; denoised out.

    With ``x_in = x / (sigma^2 + 1)`` and ``v = (x_in - denoised) * sqrt(sigma^2 + 1) / sigma``:
    ``v_cfg = v_u + cfg (v_c - v_u)``, ``v_final = m * v_cfg * std(v_c) / std(v_cfg) + (1 - m) * v_cfg``,
    result ``x_in - v_final * sigma / sqrt(sigma^2 + 1)``.
    """
    s = _per_sample(sigma, x)
    x_in = x / (s * s + 1.0)
    to_v = (s * s + 1.0) ** 0.5 / s
    v_cond = (x_in - cond) * to_v
    v_uncond = (x_in - uncond) * to_v
    v_cfg = v_uncond + cfg_scale * (v_cond - v_uncond)
    dims = _feature_dims(x)
    ratio = torch.std(v_cond, dim=dims, keepdim=True) / torch.std(v_cfg, dim=dims, keepdim=True)
    v_final = multiplier * (v_cfg * ratio) + (1.0 - multiplier) * v_cfg
    return x_in - v_final * s / (s * s + 1.0) ** 0.5


@dataclass(frozen=True)
class RescaleCFG:
    """ComfyUI's RescaleCFG: a cfg function (replaces any earlier one)."""

    multiplier: float = 0.7

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.cfg_function = self.cfg_function

    def cfg_function(self, step: GuidanceStep) -> Tensor:
        return rescale_cfg(step.x, step.sigma, step.cond_denoised, _uncond_or_zeros(step), step.cfg_scale,
                           self.multiplier)


# CFG-Zero* (Fan et al. 2025, arXiv 2503.18886): the optimized scale only, as ComfyUI's node

def optimized_scale(positive: Tensor, negative: Tensor) -> Tensor:
    """Per sample ``<p, n> / (|n|^2 + 1e-8)``, shaped [B, 1, ...]."""
    p = positive.reshape(positive.shape[0], -1)
    n = negative.reshape(negative.shape[0], -1)
    scale = (p * n).sum(dim=1, keepdim=True) / ((n * n).sum(dim=1, keepdim=True) + 1e-8)
    return scale.reshape((positive.shape[0],) + (1,) * (positive.ndim - 1))


@dataclass(frozen=True)
class CFGZeroStar:
    """ComfyUI's CFGZeroStar: a post-CFG hook. With ``a`` the optimized scale of the noise-like
    predictions, ``denoised + uncond (a - 1) + cfg * uncond (1 - a)``, i.e. CFG against ``a * uncond``."""

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.post_cfg.append(self.post_cfg)

    def post_cfg(self, step: GuidanceStep, denoised: Tensor) -> Tensor:
        uncond = _uncond_or_zeros(step)
        alpha = optimized_scale(step.x - step.cond_denoised, step.x - uncond)
        return denoised + uncond * (alpha - 1.0) + step.cfg_scale * uncond * (1.0 - alpha)


@dataclass(frozen=True)
class CFGNorm:
    """ComfyUI's CFGNorm: a post-CFG hook that caps the guided prediction's per-pixel channel norm at
    the cond's, ``denoised * clamp(|cond| / (|denoised| + 1e-8), 0, 1) * strength`` (norms over dim 1)."""

    strength: float = 1.0

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.post_cfg.append(self.post_cfg)

    def post_cfg(self, step: GuidanceStep, denoised: Tensor) -> Tensor:
        cond_norm = torch.norm(step.cond_denoised, dim=1, keepdim=True)
        norm = torch.norm(denoised, dim=1, keepdim=True)
        scale = (cond_norm / (norm + 1e-8)).clamp(min=0.0, max=1.0)
        return denoised * scale * self.strength


# APG (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance Scales")

def project(v0: Tensor, v1: Tensor) -> tuple[Tensor, Tensor]:
    """``v0``'s components parallel and orthogonal to ``v1``, per sample over the last three dims."""
    unit = v1 / v1.norm(p=2, dim=[-1, -2, -3], keepdim=True).clamp_min(1e-12)  # F.normalize's eps
    parallel = (v0 * unit).sum(dim=[-1, -2, -3], keepdim=True) * unit
    return parallel, v0 - parallel


@dataclass(frozen=True)
class APG:
    """ComfyUI's APG (Adaptive Projected Guidance): a pre-CFG hook with a running average per run."""

    eta: float = 1.0
    norm_threshold: float = 5.0
    momentum: float = 0.0

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.pre_cfg.append(StepPreCfg(_ApgRun(self)))


class _ApgRun:
    """One sampling run of :class:`APG`: the momentum's running average, reset when sigma rises."""

    def __init__(self, params: APG) -> None:
        self.params = params
        self.running: Tensor | None = None
        self.prev_sigma: float | None = None

    def __call__(self, step: GuidanceStep) -> tuple[Tensor, Tensor | None]:
        p = self.params
        cond, uncond = step.cond_denoised, _uncond_or_zeros(step)
        sigma = float(step.sigma.reshape(-1)[0])
        if self.prev_sigma is not None and sigma > self.prev_sigma:
            self.running = None
        self.prev_sigma = sigma
        guidance = cond - uncond
        if p.momentum != 0:
            self.running = guidance if self.running is None else p.momentum * self.running + guidance
            guidance = self.running
        if p.norm_threshold > 0:
            norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), p.norm_threshold / norm)
        parallel, orthogonal = project(guidance, cond)
        modified = orthogonal + p.eta * parallel
        new_cond = (uncond + modified) + (cond - uncond) / step.cfg_scale
        return new_cond, step.uncond_denoised


# TCFG (Kwon et al. 2025, "Tangential Damping Classifier-free Guidance", arXiv 2503.18137)

def tangential_damping(cond_score: Tensor, uncond_score: Tensor) -> Tensor:
    """The uncond score projected on the first right-singular vector of the [uncond; cond] matrix."""
    batch = cond_score.shape[0]
    u = uncond_score.reshape(batch, 1, -1).float()
    c = cond_score.reshape(batch, 1, -1).float()
    _, _, vh = torch.linalg.svd(torch.cat((u, c), dim=1), full_matrices=False)
    v1 = vh[:, 0:1, :]
    damped = (u @ v1.transpose(-2, -1)) * v1
    return damped.reshape_as(uncond_score).to(uncond_score.dtype)


@dataclass(frozen=True)
class TCFG:
    """ComfyUI's TCFG: a pre-CFG hook replacing uncond by ``x - damping(x - cond, x - uncond)``."""

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.pre_cfg.append(StepPreCfg(self.pre_cfg))

    def pre_cfg(self, step: GuidanceStep) -> tuple[Tensor, Tensor | None]:
        cond, uncond = step.cond_denoised, step.uncond_denoised
        if uncond is None:
            return cond, uncond
        return cond, step.x - tangential_damping(step.x - cond, step.x - uncond)


# Mahiro

@dataclass(frozen=True)
class Mahiro:
    """ComfyUI's Mahiro: a post-CFG hook that leans toward ``cond * cfg`` when the (signed square
    roots of) ``uncond * cfg`` and the merged leap disagree in direction."""

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.post_cfg.append(self.post_cfg)

    def post_cfg(self, step: GuidanceStep, denoised: Tensor) -> Tensor:
        scale = step.cfg_scale
        leap = step.cond_denoised * scale
        u_leap = _uncond_or_zeros(step) * scale
        merge = (leap + denoised) / 2
        norm_u = torch.sqrt(u_leap.abs()) * u_leap.sign()
        norm_m = torch.sqrt(merge.abs()) * merge.sign()
        sim = F.cosine_similarity(norm_u, norm_m).mean()
        weight = 2 * (sim + 1)
        return (weight * denoised + (4 - weight) * leap) / 4


# FreSca (Huang et al. 2025, "FreSca: Scaling in Frequency Space Enhances Diffusion Models")

def fourier_filter(x: Tensor, scale_low: float, scale_high: float, freq_cutoff: int) -> Tensor:
    """``x`` with its centred low frequencies (``freq_cutoff`` indices each side of the centre of every
    dim after the first two, clamped to the size) scaled by ``scale_low``, the rest by ``scale_high``."""
    dtype = x.dtype
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full(spectrum.shape, float(scale_high), device=x.device)
    centre = mask
    for dim in range(2, spectrum.ndim):
        half = spectrum.shape[dim] // 2
        width = min(freq_cutoff, half)
        centre = centre.narrow(dim, half - width, width * 2)
    centre.fill_(scale_low)
    filtered = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return filtered.to(dtype)


@dataclass(frozen=True)
class FreSca:
    """ComfyUI's FreSca: a pre-CFG hook that frequency-scales ``cond - uncond``."""

    scale_low: float = 1.0
    scale_high: float = 1.25
    freq_cutoff: int = 20

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.pre_cfg.append(self.pre_cfg)

    def pre_cfg(self, cond: Tensor, uncond: Tensor | None, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        if uncond is None:
            return cond, uncond
        guidance = fourier_filter(cond - uncond, self.scale_low, self.scale_high, self.freq_cutoff)
        return guidance + uncond, uncond


# Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm")

def perp_neg(cond: Tensor, uncond: Tensor, empty: Tensor, neg_scale: float, cfg_scale: float) -> Tensor:
    """``empty + cfg * (pos - neg_scale * perp)`` with ``pos = cond - empty``, ``neg = uncond - empty`` and
    ``perp`` the part of ``neg`` orthogonal to ``pos`` (dot product and norm over the whole batch)."""
    pos = cond - empty
    neg = uncond - empty
    perp = neg - (torch.mul(neg, pos).sum() / torch.norm(pos) ** 2) * pos
    return empty + cfg_scale * (pos - perp * neg_scale)


@dataclass(frozen=True, eq=False)
class PerpNeg:
    """ComfyUI's PerpNeg model patch: a cfg function (replaces any earlier one) using the prediction
    of ``empty_conditioning``, which runs in the same batch as cond and uncond."""

    empty_conditioning: Any
    neg_scale: float = 1.0

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        index = hooks.add_extra_conditioning(self.empty_conditioning)
        hooks.cfg_function = functools.partial(self.cfg_function, index)

    def cfg_function(self, index: int, step: GuidanceStep) -> Tensor:
        return perp_neg(step.cond_denoised, _uncond_or_zeros(step), step.extra_denoised[index], self.neg_scale,
                        step.cfg_scale)


# Differential Diffusion (Levin & Fried 2023, "Differential Diffusion: Giving Each Pixel Its Strength")

def differential_mask(model_sampling: Any, strength: float, mask: Tensor, sigma: Tensor, sigmas: Tensor) -> Tensor:
    """The inpaint mask for this step: where the soft mask reaches the schedule's progress.

    ``threshold = (t(sigma) - t_to) / (t_from - t_to)`` in model timesteps, from the first sigma of the
    schedule to its last (at least sigma_min); the mask is ``mask >= threshold``, blended with the soft
    mask as ``strength * binary + (1 - strength) * mask`` when 0 < strength < 1.
    """
    sigma_to = model_sampling.sigma_min
    if sigmas[-1] > sigma_to:
        sigma_to = sigmas[-1]
    ts_from = model_sampling.timestep(sigmas[0])
    ts_to = model_sampling.timestep(sigma_to)
    current = model_sampling.timestep(sigma[0])
    threshold = (current - ts_to) / (ts_from - ts_to)
    binary = (mask >= threshold).to(mask.dtype)
    if strength and strength < 1:
        return strength * binary + (1 - strength) * mask
    return binary


@dataclass(frozen=True)
class DifferentialDiffusion:
    """ComfyUI's DifferentialDiffusion: the inpaint mask function (replaces any earlier one)."""

    strength: float = 1.0

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.denoise_mask_fn = functools.partial(differential_mask, model_sampling, self.strength)
