"""The Stable Diffusion x4 upscaler's extra UNet inputs: the low-res image and its noise level.

The x4 upscaler (``x4-upscaler-ema``, diffusers' ``StableDiffusionUpscalePipeline``) is an SD2-style
v-prediction UNet with 7 input channels: the 4 latent channels of a 4x-downsampling VAE, then the
low-resolution RGB image itself (pixels in -1..1, at the latent's size). A class-label table
(``label_emb.weight``, 1000 rows) embeds the noise level the low-res image was augmented with.

* :func:`x4_source`: the ``concat_image`` and ``noise_augmentation`` that SD_4XUpscale_Conditioning put
  on the first positive entry that has them.
* :func:`x4_concat`: the 3 extra channels: the image resized (bilinear, centre crop) to the latent,
  noised when ``noise_augmentation > 0`` as ``sqrt(acp[t]) x + sqrt(1 - acp[t]) noise`` at
  ``t = round(350 * noise_augmentation)`` on the augmentation's own schedule, and repeated to the batch.
  The noise is ``torch.randn`` of a CPU generator seeded with the sampler's seed - 10 (ComfyUI's seeding).
* :func:`x4_label`: the class label ``y`` of an entry: the same ``t`` (0 without augmentation).

Both the model's sampling schedule and the augmentation's are SD's "scaled linear" betas
(``linspace(sqrt(1e-4), sqrt(0.02), 1000) ** 2``: :data:`LINEAR_START`, :data:`LINEAR_END`; diffusers
names them ``scaled_linear`` with ``beta_start=0.0001``, LDM ``linear``). Facts from the published model
configuration; checked in the tests against diffusers' DDPMScheduler and UNet2DConditionModel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from engine.backend.latents import repeat_to_batch
from engine.backend.resample import resize

__all__ = ["LATENT_SCALE", "LINEAR_END", "LINEAR_START", "MAX_NOISE_LEVEL", "augmentation_schedule",
           "noise_level", "x4_concat", "x4_label", "x4_source"]

#: The noise level of ``noise_augmentation == 1``.
MAX_NOISE_LEVEL = 350
#: The first and last beta of the model's (and the augmentation's) schedule.
LINEAR_START = 1e-4
LINEAR_END = 0.02
#: The x4 VAE's latent scale (model latent = VAE latent * this).
LATENT_SCALE = 0.08333
#: ComfyUI seeds the augmentation noise with the sampler's seed minus this.
SEED_OFFSET = 10
#: The conditioning keys SD_4XUpscale_Conditioning sets.
IMAGE_KEY = "concat_image"
AUGMENTATION_KEY = "noise_augmentation"


def noise_level(noise_augmentation: float) -> int:
    """The augmentation schedule step (and class label) of a ``noise_augmentation`` in 0..1."""
    return round(MAX_NOISE_LEVEL * float(noise_augmentation))


def augmentation_schedule(steps: int = 1000) -> tuple[Tensor, Tensor]:
    """``(sqrt(acp), sqrt(1 - acp))`` of the augmentation schedule (float64 math, float32 out)."""
    betas = torch.linspace(LINEAR_START**0.5, LINEAR_END**0.5, steps, dtype=torch.float64) ** 2
    acp = torch.cumprod(1.0 - betas, dim=0)
    return acp.sqrt().float(), (1.0 - acp).sqrt().float()


def x4_source(positive: Sequence[Sequence[Any]]) -> tuple[Tensor | None, float]:
    """The low-res image and noise augmentation of the first positive entry with an image (None, 0.0 without)."""
    for _, extras in positive:
        if extras.get(IMAGE_KEY) is not None:
            return extras[IMAGE_KEY], float(extras.get(AUGMENTATION_KEY, 0.0))
    return None, 0.0


def x4_concat(image: Tensor | None, model_latent: Tensor, noise_augmentation: float, seed: int) -> Tensor:
    """The 3 extra input channels ``[B, 3, h, w]`` for latents like ``model_latent`` (module docstring)."""
    height, width = model_latent.shape[-2:]
    if image is None:
        return model_latent.new_zeros((model_latent.shape[0], 3, height, width))
    pixels = resize(image.float().cpu(), int(width), int(height), "bilinear", "center")
    level = noise_level(noise_augmentation)
    if noise_augmentation > 0:
        generator = torch.Generator().manual_seed(seed - SEED_OFFSET)
        noise = torch.randn(pixels.shape, generator=generator)
        sqrt_acp, sqrt_one_minus = augmentation_schedule()
        pixels = sqrt_acp[level] * pixels + sqrt_one_minus[level] * noise
    return repeat_to_batch(pixels, model_latent.shape[0]).to(model_latent)


def x4_label(extras: Mapping[str, Any]) -> Tensor:
    """The class label ``y`` ``[1, 1]`` of a conditioning entry: its noise level."""
    return torch.tensor([[float(noise_level(extras.get(AUGMENTATION_KEY, 0.0)))]])
