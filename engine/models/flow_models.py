"""The rectified-flow transformers as model parts: recognising SD3/SD3.5 and Flux.1 from their keys, and
building them on the meta device.

Keys (under ``model.diffusion_model.`` in a checkpoint, bare or under that prefix in a UNETLoader file):

* SD3 / SD3.5 MMDiT (:mod:`engine.backend.mmdit`): ``joint_blocks.N.{x_block,context_block}.*``,
  ``x_embedder``, ``pos_embed``; SD3.5 adds qk-norm (``attn.ln_q``), which is how the two are told apart
  (SD3.5 large and large-turbo share one layout: the turbo is a sampling choice, not a structure);
* Flux.1 (:mod:`engine.backend.flux`): ``double_blocks.N.*``, ``single_blocks.N.*``, ``img_in``; dev has a
  guidance embedding (``guidance_in``), schnell none; Fill takes 384 patchified input channels (latent,
  masked image and mask), the Depth/Canny models 128 (latent and control image).

Flux's RoPE split is not stored in the file: Flux.1's 128-wide heads use (16, 56, 56); other widths (tiny
test and demo models) use Loom's rule :func:`flux_axes`. The MMDiT's head count shows only with qk-norm;
without it SD3's 64-wide heads are assumed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from engine.backend.flux import REAL_AXES_DIM, Flux, FluxConfig, flux_config_from_state_dict
from engine.backend.mmdit import MMDiT, mmdit_config_from_state_dict
from engine.models.families import ModelFamily

__all__ = ["FLOW_ROOTS", "build_flow_model", "flow_family", "flux_axes", "is_flow_layout"]

#: Top-level names of the MMDiT's and Flux's weights (a UNet file's keys outside these are not the model's).
FLOW_ROOTS = ("joint_blocks.", "x_embedder.", "pos_embed", "t_embedder.", "y_embedder.", "context_embedder.",
              "final_layer.", "double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "vector_in.",
              "guidance_in.")
#: One key of each transformer that a file must hold for the layout to be recognised.
MMDIT_MARK = "joint_blocks.0.x_block.attn.qkv.weight"
FLUX_MARK = "img_in.weight"
#: Flux's patchified input channels by variant (a 16-channel latent in 2x2 patches is 64).
_FLUX_INPUTS = {64: "", 128: "control", 384: "fill"}


def is_flow_layout(keys: Mapping[str, object] | set[str] | list[str], prefix: str) -> bool:
    """Whether an MMDiT or a Flux transformer is under ``prefix``."""
    names = keys if isinstance(keys, (set, dict)) else set(keys)
    return prefix + MMDIT_MARK in names or (prefix + FLUX_MARK in names and prefix + "txt_in.weight" in names)


def flux_axes(head_dim: int) -> tuple[int, int, int]:
    """The RoPE split of a Flux head: Flux.1's (16, 56, 56) for 128; otherwise an eighth (even) for the
    first axis and the rest halved between the two image axes (each even), as Flux.1's split does."""
    if head_dim == sum(REAL_AXES_DIM):
        return (REAL_AXES_DIM[0], REAL_AXES_DIM[1], REAL_AXES_DIM[2])
    first = max(2, (head_dim // 8) // 2 * 2)
    side = (head_dim - first) // 4 * 2
    first = head_dim - 2 * side
    if first <= 0 or side <= 0:
        raise ValueError(f"a Flux head of width {head_dim} is too narrow for three RoPE axes")
    return (first, side, side)


def _flux_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> FluxConfig:
    head_key = f"{prefix}double_blocks.0.img_attn.norm.query_norm.scale"
    if head_key not in shapes:
        head_key = f"{prefix}single_blocks.0.norm.query_norm.scale"
    head_dim = shapes[head_key][0] if head_key in shapes else sum(REAL_AXES_DIM)
    return flux_config_from_state_dict(shapes, prefix, axes_dim=flux_axes(head_dim))


def flow_family(shapes: Mapping[str, tuple[int, ...]], prefix: str, where: str) -> ModelFamily | None:
    """The family of the transformer under ``prefix`` (None: no MMDiT or Flux there); ValueError naming
    ``where`` for one whose shapes do not make a model."""
    try:
        if prefix + MMDIT_MARK in shapes:
            config = mmdit_config_from_state_dict(shapes, prefix)
            variant = "sd3.5" if config.qk_norm else "sd3"
            return ModelFamily("sd3", "flow", config.in_channels, 16, variant=variant)
        if prefix + FLUX_MARK in shapes and prefix + "txt_in.weight" in shapes:
            flux = _flux_config(shapes, prefix)
            kind = _FLUX_INPUTS.get(flux.in_channels)
            if kind is None:
                raise ValueError(f"a Flux transformer with {flux.in_channels} input channels (64 plain, 128 "
                                 "depth/canny, 384 fill are known)")
            variant = kind or ("dev" if flux.guidance_embed else "schnell")
            return ModelFamily("flux", "flow", flux.in_channels // 4, 16, variant=variant)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return None


def build_flow_model(family: ModelFamily, shapes: Mapping[str, tuple[int, ...]]) -> nn.Module:
    """An MMDiT or Flux of ``family`` with the shapes ``shapes`` (bare names), on the meta device."""
    with torch.device("meta"):
        if family.name == "sd3":
            return MMDiT(mmdit_config_from_state_dict(shapes, ""))
        if family.name == "flux":
            return Flux(_flux_config(shapes, ""))
    raise ValueError(f"{family.label} is not a rectified-flow transformer family")
