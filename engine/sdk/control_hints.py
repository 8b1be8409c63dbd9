"""The hint encoder of SD3/Flux ControlNets: ControlNetApplyAdvanced's ``vae`` turns the hint image into the latent
those nets read (engine/backend/flow_control.py calls it once per latent size when sampling starts)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.context import RunContext
from engine.models.handles import VaeHandle
from engine.providers import ModelProvider
from engine.sdk.ops import from_pixels

__all__ = ["VaeHintEncoder", "hint_encoder"]


@dataclass(frozen=True, eq=False)
class VaeHintEncoder:
    """Pixels ``[B, 3, H, W]`` (0..1) -> the VAE latents of ``vae`` (float32, the posterior mean)."""

    models: ModelProvider
    vae: VaeHandle

    def __call__(self, pixels: Tensor) -> Tensor:
        model = self.models.vae(self.vae)
        with torch.inference_mode():
            return model.encode(from_pixels(pixels.movedim(1, -1), model, self.models.device)).float()


def hint_encoder(ctx: RunContext, vae: VaeHandle) -> VaeHintEncoder:
    """The encoder a ControlSpec keeps for its hint (it loads the VAE only when a sampler needs the latent)."""
    return VaeHintEncoder(ctx.models, vae)
