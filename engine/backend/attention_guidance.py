"""Guidance from a second model evaluation with altered self-attention: SAG and PAG.

* Self-attention guidance (Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using
  Self-Attention Guidance"): the uncond pass records the self-attention probabilities of the middle
  block's first transformer block; the uncond prediction is blurred where that attention
  concentrates, re-noised, run through the model again, and ``(degraded - prediction) * scale`` is
  added to the guided result.
* Perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with
  Perturbed-Attention Guidance"): the cond is run again with the middle block's self-attention
  replaced by identity attention (its output is the values), and ``(cond - perturbed) * scale`` is added.

Both are post-CFG hooks (engine.backend.guidance) that re-run ``step.model_fn`` with the keyword
``unet_patches`` (engine.backend.conditioning.UNetApply adds them for that call). The constants and
the blur-map rules are ComfyUI's (comfy_extras/nodes_sag.py, nodes_pag.py), read for facts only. A
scale of 0 installs nothing, so the model runs exactly as without the patch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.attention import attention_with_probs
from engine.backend.unet import PatchContext

log = logging.getLogger(__name__)

#: Where both guidances act: the middle block (SAG: its first transformer block).
MIDDLE = ("middle", 0)
#: SAG blurs where the summed attention a token receives exceeds this (ComfyUI's).
SAG_THRESHOLD = 1.0
SAG_KERNEL = 9


class Hooks(Protocol):
    """What these patches need of engine.backend.guidance.GuidanceHooks."""

    post_cfg: list[Any]
    needs_uncond: bool

    def add_unet_patch(self, point: str, patch: Any) -> None: ...


def gaussian_blur(image: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """A separable Gaussian kernel applied per channel with reflect padding (size preserved)."""
    half = (kernel_size - 1) * 0.5
    taps = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (taps / sigma).pow(2))
    kernel1d = (pdf / pdf.sum()).to(device=image.device, dtype=image.dtype)
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :])
    channels = image.shape[-3]
    kernel = kernel.expand(channels, 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(image, [pad] * 4, mode="reflect"), kernel, groups=channels)


def attention_mask(probs: Tensor, batch: int, height: int, width: int, threshold: float) -> Tensor:
    """``[B, 1, height, width]`` float mask of the tokens whose received attention (probabilities
    ``[B * heads, N, N]`` averaged over heads, summed over queries) exceeds ``threshold``, upsampled
    (nearest) from the attention's grid."""
    _, queries, keys = probs.shape
    received = probs.reshape(batch, -1, queries, keys).mean(1).sum(1) > threshold
    ratio = 2 ** (math.ceil(math.sqrt(height * width / queries)) - 1).bit_length()
    grid = (math.ceil(height / ratio), math.ceil(width / ratio))
    mask = received.reshape(batch, *grid).unsqueeze(1).to(probs.dtype)
    return F.interpolate(mask, (height, width))


def sag_degrade(x0: Tensor, probs: Tensor, blur_sigma: float, threshold: float = SAG_THRESHOLD) -> Tensor:
    """``x0`` blurred (Gaussian, kernel 9) where :func:`attention_mask` is set, unchanged elsewhere.
    A blur sigma of 0 (ComfyUI: a division by zero) leaves ``x0`` as it is."""
    batch, _, height, width = x0.shape
    mask = attention_mask(probs, batch, height, width, threshold).to(x0)
    if blur_sigma <= 0:
        return x0
    blurred = gaussian_blur(x0, SAG_KERNEL, blur_sigma)
    return blurred * mask + x0 * (1 - mask)


def _with_patches(kwargs: Mapping[str, Any], point: str, fn: Any) -> dict[str, Any]:
    """``kwargs`` with ``fn`` added at ``point`` of its ``unet_patches``."""
    patches: dict[str, Sequence[Any]] = dict(kwargs.get("unet_patches") or {})
    patches[point] = (*patches.get(point, ()), fn)
    return {**kwargs, "unet_patches": patches}


# ------------------------------------------------------------------------------------------- SAG


@dataclass
class _AttentionRecorder:
    """``attn1_replace`` at the middle block's first transformer block: plain attention that also keeps
    the probabilities of each batch group, keyed by the id of the group's conditioning entry."""

    maps: dict[int, Tensor] = field(default_factory=dict)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, ctx: PatchContext) -> Tensor | None:
        if ctx.block != MIDDLE or ctx.block_index != 0:
            return None
        out, probs = attention_with_probs(q, k, v, ctx.heads)
        start = 0
        for key, count in ctx.rows or ((None, q.shape[0]),):
            self.maps[id(key)] = probs[start * ctx.heads:(start + count) * ctx.heads]
            start += count
        return out

    def probs_for(self, entries: Sequence[Any]) -> Tensor | None:
        """The recorded probabilities of the first entry of ``entries`` that has them, one that covers
        the whole latent first."""
        ranked = sorted(entries, key=lambda entry: getattr(entry, "area", None) is not None)
        for entry in ranked:
            if id(entry) in self.maps:
                return self.maps[id(entry)]
        return None


@dataclass(frozen=True)
class SelfAttentionGuidancePatch:
    """SelfAttentionGuidance (scale, blur_sigma); it asks for the uncond pass even at cfg 1."""

    scale: float
    blur_sigma: float

    def install(self, hooks: Hooks, model_sampling: Any) -> None:
        if self.scale == 0:
            return
        recorder = _AttentionRecorder()
        hooks.add_unet_patch("attn1_replace", recorder)
        hooks.needs_uncond = True
        hooks.post_cfg.append(_SagHook(self, recorder))


@dataclass(frozen=True)
class _SagHook:
    patch: SelfAttentionGuidancePatch
    recorder: _AttentionRecorder

    def __call__(self, step: Any, denoised: Tensor) -> Tensor:
        uncond = step.uncond_denoised
        if min(denoised.shape[2:]) <= SAG_KERNEL // 2 or uncond is None:  # too small to pad for the blur
            return denoised
        probs = self.recorder.probs_for(step.uncond)
        if probs is None:
            log.warning("SelfAttentionGuidance: no self-attention was recorded for the negative prompt "
                        "(a model without a middle transformer block?); the step is left unguided")
            return denoised
        degraded = sag_degrade(uncond, probs, self.patch.blur_sigma)
        noised = degraded + step.x - uncond
        prediction = step.model_fn(noised, step.sigma, [step.uncond], **step.kwargs)
        return denoised + (degraded - prediction) * self.patch.scale


# ------------------------------------------------------------------------------------------- PAG


def identity_attention(q: Tensor, k: Tensor, v: Tensor, ctx: PatchContext) -> Tensor | None:
    """``attn1_replace`` for the middle block: every token attends only to itself (output = values)."""
    return v if ctx.block == MIDDLE else None


@dataclass(frozen=True)
class PerturbedAttentionGuidancePatch:
    """PerturbedAttentionGuidance (scale); it asks for the uncond pass even at cfg 1 (as ComfyUI)."""

    scale: float

    def install(self, hooks: Hooks, model_sampling: Any) -> None:
        if self.scale == 0:
            return
        hooks.needs_uncond = True
        hooks.post_cfg.append(_PagHook(self.scale))


@dataclass(frozen=True)
class _PagHook:
    scale: float

    def __call__(self, step: Any, denoised: Tensor) -> Tensor:
        kwargs = _with_patches(step.kwargs, "attn1_replace", identity_attention)
        perturbed = step.model_fn(step.x, step.sigma, [step.cond], **kwargs)
        return denoised + (step.cond_denoised - perturbed) * self.scale
