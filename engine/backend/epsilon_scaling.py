"""Epsilon Scaling (Ning et al. 2024, "Elucidating the Exposure Bias in Diffusion Models", uniform
schedule): divide the guided noise prediction by a constant factor slightly above 1 at every step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from engine.backend.guidance import GuidanceHooks, GuidanceStep


@dataclass(frozen=True)
class EpsilonScaling:
    """A sampling patch: after CFG, ``denoised = x - (x - denoised) / scaling_factor``, i.e. the
    step's noise estimate ``(x - denoised)`` scaled by 1 / scaling_factor (ComfyUI's post-CFG hook)."""

    scaling_factor: float

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        hooks.post_cfg.append(self.rescale)

    def rescale(self, step: GuidanceStep, denoised: Tensor) -> Tensor:
        factor = self.scaling_factor if self.scaling_factor != 0 else 1e-9
        return step.x - (step.x - denoised) / factor
