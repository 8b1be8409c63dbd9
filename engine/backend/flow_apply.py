"""Running the rectified-flow transformers (SD3/SD3.5 MMDiT, Flux.1) where the sampler runs a UNet, and
skip-layer guidance.

:class:`FlowTransformerCall` takes the UNet's call (``x, timestep, context, y=, control=, patches=``) that
:class:`engine.backend.conditioning.UNetApply` makes, plus Flux's per-row ``guidance``, and calls the MMDiT
or Flux. Of the UNet patch points only ``skip_layers`` means something here (the blocks skip-layer guidance
leaves out); ``control`` carries SD3/Flux ControlNet residuals (engine/backend/flow_control.py) to the model;
other UNet patches (FreeU, attention replacements, ...) are refused with a message naming the model, since their
UNet-shaped hooks have no place in a transformer.

:class:`SkipLayerGuidancePatch` is ComfyUI's SkipLayerGuidanceDiT (and SkipLayerGuidanceSD3, its double-block
form): a post-CFG hook that, while the noise level is within ``[sigma(end_percent), sigma(start_percent)]``,
runs the positive prompt again with some blocks skipped and adds ``(cond - skipped) * scale``, optionally
rescaled towards the cond's spread.

:func:`flux_concat` makes the extra input channels of Flux.1 Fill (the masked image's latent and the mask,
each latent pixel's 8x8 mask pixels as 64 channels) and of the Depth/Canny models (the control image's
latent), from what InpaintModelConditioning / InstructPixToPixConditioning put on the conditioning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.flux import Flux
from engine.backend.latent_formats import LatentFormat
from engine.backend.mmdit import MMDiT
from engine.backend.resample import center_crop_to_aspect

#: The patch point carrying the blocks to skip: entries are :class:`SkippedBlocks`.
SKIP_LAYERS = "skip_layers"
#: Flux's distilled guidance when a conditioning entry sets none (ComfyUI's Flux default).
FLUX_DEFAULT_GUIDANCE = 3.5


@dataclass(frozen=True)
class SkippedBlocks:
    """Blocks a model call leaves out: ``double`` (MMDiT joint blocks, Flux double blocks) and ``single``
    (Flux single blocks)."""

    double: tuple[int, ...] = ()
    single: tuple[int, ...] = ()


class FlowTransformerCall:
    """An MMDiT or Flux called as UNetApply calls a UNet."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, (MMDiT, Flux)):
            raise TypeError(f"{type(model).__name__} is not an MMDiT or Flux transformer")
        self.model = model
        self.config = model.config
        self.label = "SD3" if isinstance(model, MMDiT) else "Flux"

    @property
    def pooled_width(self) -> int:
        """Width of the pooled text vector ``y`` the model takes."""
        if isinstance(self.model, MMDiT):
            return self.model.config.pooled_dim
        return self.model.config.vec_in_dim

    @property
    def takes_guidance(self) -> bool:
        """Whether the model embeds a distilled guidance scale (Flux.1 dev)."""
        return isinstance(self.model, Flux) and self.model.config.guidance_embed

    def __call__(self, x: Tensor, timestep: Tensor, context: Tensor, *, y: Tensor | None = None,
                 control: Any = None, patches: Mapping[str, Sequence[Any]] | None = None,
                 guidance: Tensor | None = None) -> Tensor:
        skipped = _skipped(patches or {}, self.label)
        if y is None:
            y = x.new_zeros((x.shape[0], self.pooled_width))
        if isinstance(self.model, MMDiT):
            if skipped.single:
                raise ValueError("skip-layer guidance: SD3 models have no single blocks; list joint blocks under "
                                 "double_layers")
            return self.model(x, timestep, context, y, skip_layers=skipped.double, control=control)
        return self.model(x, timestep, context, y, guidance=guidance if self.takes_guidance else None,
                          skip_double=skipped.double, skip_single=skipped.single, control=control)


def _skipped(patches: Mapping[str, Sequence[Any]], label: str) -> SkippedBlocks:
    unknown = sorted(point for point, entries in patches.items() if entries and point != SKIP_LAYERS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)} patches (FreeU, attention or block patches made for UNets) do not "
                         f"apply to {label} models; remove the node that adds them")
    double: set[int] = set()
    single: set[int] = set()
    for entry in patches.get(SKIP_LAYERS, ()):
        double.update(entry.double)
        single.update(entry.single)
    return SkippedBlocks(tuple(sorted(double)), tuple(sorted(single)))


@dataclass(frozen=True)
class SkipLayerGuidancePatch:
    """SkipLayerGuidanceDiT / SkipLayerGuidanceSD3 on a MODEL (a sampling patch: ``install(hooks, ms)``)."""

    blocks: SkippedBlocks
    scale: float
    start_percent: float
    end_percent: float
    rescaling_scale: float = 0.0

    def install(self, hooks: Any, model_sampling: Any) -> None:
        if not (self.blocks.double or self.blocks.single):
            return
        sigma_start = float(model_sampling.percent_to_sigma(self.start_percent))
        sigma_end = float(model_sampling.percent_to_sigma(self.end_percent))
        hooks.post_cfg.append(_SkipLayerHook(self, sigma_start, sigma_end))


@dataclass(frozen=True)
class _SkipLayerHook:
    patch: SkipLayerGuidancePatch
    sigma_start: float
    sigma_end: float

    def __call__(self, step: Any, denoised: Tensor) -> Tensor:
        sigma = float(step.sigma.reshape(-1)[0])
        if self.patch.scale <= 0 or not self.sigma_end <= sigma <= self.sigma_start:
            return denoised
        patches: dict[str, Sequence[Any]] = dict(step.kwargs.get("unet_patches") or {})
        patches[SKIP_LAYERS] = (*patches.get(SKIP_LAYERS, ()), self.patch.blocks)
        skipped = step.model_fn(step.x, step.sigma, [step.cond], **{**step.kwargs, "unet_patches": patches})
        result = denoised + (step.cond_denoised - skipped) * self.patch.scale
        if self.patch.rescaling_scale:
            factor = step.cond_denoised.std() / result.std()
            result = result * (self.patch.rescaling_scale * factor + (1 - self.patch.rescaling_scale))
        return result


def flux_concat(sources: Mapping[str, Any], model_latent: Tensor, denoise_mask: Tensor | None,
                latent_format: LatentFormat, fill: bool) -> Tensor:
    """The channels Flux Fill (``fill``: 16 image + 64 mask) or Flux Depth/Canny (16 image) take after the latent.

    ``sources`` holds ``concat_latent_image`` (a VAE latent; zeros without one, as ComfyUI) and for Fill
    ``concat_mask`` (pixels; else the noise mask; else all ones). Both are resized bilinearly to the latent
    (the mask to 8x its size) and repeated to its batch.
    """
    batch, _, height, width = model_latent.shape
    image = sources.get("concat_latent_image")
    if image is None:
        image = torch.zeros_like(model_latent)
    image = _fit(image.float().to(model_latent.device), height, width, batch)
    image = latent_format.to_model(image)
    if not fill:
        return image
    mask = sources.get("concat_mask")
    if mask is None:
        mask = denoise_mask if denoise_mask is not None else torch.ones_like(model_latent[:, :1])
    mask = mask.float().to(model_latent.device)
    mask = mask.unsqueeze(1) if mask.ndim == 3 else mask
    mask = _fit(mask.mean(dim=1, keepdim=True), height * 8, width * 8, batch)
    mask = mask.view(batch, 1, height, 8, width, 8).permute(0, 1, 3, 5, 2, 4).reshape(batch, 64, height, width)
    return torch.cat((image, mask), dim=1)


def _fit(tensor: Tensor, height: int, width: int, batch: int) -> Tensor:
    """``tensor`` [b, c, h, w] resized (bilinear, centre-cropped to the aspect) and repeated to ``batch``."""
    if tensor.shape[-2:] != (height, width):
        tensor = F.interpolate(center_crop_to_aspect(tensor, width, height), size=(height, width), mode="bilinear",
                               align_corners=False)
    if tensor.shape[0] < batch:
        tensor = tensor.repeat(-(-batch // tensor.shape[0]), 1, 1, 1)
    return tensor[:batch]
