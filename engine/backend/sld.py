"""Safe Latent Diffusion (Schramowski et al. 2023, "Safe Latent Diffusion: Mitigating Inappropriate
Degeneration in Diffusion Models"), as diffusers' StableDiffusionPipelineSafe computes it.

Each step predicts the noise three times, for the unconditional prompt, the prompt and a *safety
concept* (a text naming what to steer away from), and guides on eps::

    diff     = eps_text - eps_concept
    scale    = min(|diff| * sld_guidance_scale, 1)            element-wise; 0 where diff >= sld_threshold
    safety   = (eps_concept - eps_uncond) * scale + sld_momentum_scale * momentum
    momentum = sld_mom_beta * momentum + (1 - sld_mom_beta) * safety     (momentum starts at 0)
    eps      = eps_uncond + cfg * (eps_text - eps_uncond - safety)        safety only from step sld_warmup_steps on

Loom's guidance hooks see *denoised* predictions in k-diffusion's VE convention (``x = x0 + sigma *
eps``), so :class:`SafetyRun` converts them to eps with ``eps = (x - denoised) / sigma`` and back.
The patch (:class:`SafeLatentDiffusionPatch`) is frozen and shared by every run of a MODEL; the
momentum and the step count live in the :class:`SafetyRun` that ``install`` makes for one run.
The step index is the rank of the step's sigma among the distinct sigmas seen so far in the run
(the sigmas fall step by step), so a sampler that evaluates the model twice per step (Heun) counts
its second evaluation as the next step's sigma, and the momentum is updated at every model call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.backend.guidance import GuidanceHooks, GuidanceStep, cfg_combine


@dataclass(frozen=True)
class SafetySettings:
    """The five numbers of Safe Latent Diffusion (diffusers' ``sld_*`` arguments)."""

    guidance_scale: float = 1000.0
    warmup_steps: int = 10
    threshold: float = 0.01
    momentum_scale: float = 0.3
    mom_beta: float = 0.4

    @property
    def enabled(self) -> bool:
        """diffusers turns safety guidance off for ``sld_guidance_scale <= 1``."""
        return self.guidance_scale > 1.0


#: diffusers' SafetyConfig presets (the paper's hyper-parameter sets).
PRESETS: dict[str, SafetySettings] = {
    "WEAK": SafetySettings(guidance_scale=20, warmup_steps=15, threshold=0.0, momentum_scale=0.0, mom_beta=0.0),
    "MEDIUM": SafetySettings(guidance_scale=1000, warmup_steps=10, threshold=0.01, momentum_scale=0.3, mom_beta=0.4),
    "STRONG": SafetySettings(guidance_scale=2000, warmup_steps=7, threshold=0.025, momentum_scale=0.5, mom_beta=0.7),
    "MAX": SafetySettings(guidance_scale=5000, warmup_steps=0, threshold=1.0, momentum_scale=0.5, mom_beta=0.7),
}


def safety_guidance(eps_uncond: Tensor, eps_text: Tensor, eps_concept: Tensor, momentum: Tensor | None,
                    step_index: int, settings: SafetySettings) -> tuple[Tensor, Tensor]:
    """One step of SLD on eps predictions: ``(noise_guidance, new momentum)``.

    ``noise_guidance`` replaces ``eps_text - eps_uncond`` in ``eps_uncond + cfg * noise_guidance``.
    ``momentum`` is None on the first step (zeros).
    """
    if momentum is None:
        momentum = torch.zeros_like(eps_text)
    guidance = eps_text - eps_uncond
    diff = eps_text - eps_concept
    scale = torch.clamp(diff.abs() * settings.guidance_scale, max=1.0)
    scale = torch.where(diff >= settings.threshold, torch.zeros_like(scale), scale)
    safety = (eps_concept - eps_uncond) * scale
    safety = safety + settings.momentum_scale * momentum
    momentum = settings.mom_beta * momentum + (1 - settings.mom_beta) * safety
    if step_index >= settings.warmup_steps:
        guidance = guidance - safety
    return guidance, momentum


class SafetyRun:
    """The cfg function of one sampling run: momentum and step count carried from call to call."""

    def __init__(self, settings: SafetySettings, concept_index: int) -> None:
        self.settings = settings
        self.concept_index = concept_index
        self.momentum: Tensor | None = None
        self.sigmas: list[float] = []

    def step_index(self, sigma: Tensor) -> int:
        """The rank of ``sigma`` among the distinct sigmas of this run so far (0 for the first step)."""
        current = float(sigma.reshape(-1)[0])
        if not any(math.isclose(current, seen, rel_tol=1e-6) for seen in self.sigmas):
            self.sigmas.append(current)
        return sum(1 for seen in self.sigmas if seen > current and not math.isclose(current, seen, rel_tol=1e-6))

    def __call__(self, step: GuidanceStep) -> Tensor:
        uncond = step.uncond_denoised
        if uncond is None or step.cfg_scale <= 1.0:  # diffusers: no CFG, no safety guidance
            return step.cond_denoised if uncond is None else cfg_combine(step.cond_denoised, uncond, step.cfg_scale)
        sigma = _expand(step.sigma, step.x)
        eps_uncond, eps_text, eps_concept = ((step.x - denoised) / sigma for denoised in
                                             (uncond, step.cond_denoised, step.extra_denoised[self.concept_index]))
        guidance, self.momentum = safety_guidance(eps_uncond, eps_text, eps_concept, self.momentum,
                                                  self.step_index(step.sigma), self.settings)
        return step.x - (eps_uncond + step.cfg_scale * guidance) * sigma


def _expand(sigma: Tensor, like: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1)) if sigma.ndim else sigma


@dataclass(frozen=True, eq=False)
class SafeLatentDiffusionPatch:
    """A MODEL sampling patch: guide every run away from ``concept`` (a CONDITIONING) with ``settings``.

    It replaces the CFG combination (a patch installed after it that sets its own cfg function wins).
    """

    concept: Any
    settings: SafetySettings

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        if not self.settings.enabled:
            return
        index = hooks.add_extra_conditioning(self.concept)
        hooks.cfg_function = SafetyRun(self.settings, index)
