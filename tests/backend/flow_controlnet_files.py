"""Tiny SD3 and Flux ControlNets (and the transformers they steer) from diffusers, with seeded random weights,
written to real files in the layouts the released nets use.

* :func:`sd3_controlnet` / :func:`flux_controlnet`: diffusers' ``SD3ControlNetModel`` / ``FluxControlNetModel``
  (InstantX's layout; ``num_mode`` makes a union net, ``conditioning_embedding_channels=16`` XLabs' structure);
  :func:`write_diffusers` saves one as it is (the InstantX files are these state dicts).
* :func:`write_xlabs`: a pixel-hint FluxControlNetModel renamed to XLabs' ``x-flux`` layout (Flux checkpoint names,
  ``input_hint_block.{0,2,...,14}``, ``pos_embed_input``), the layout of XLabs' released files.
* :func:`sd3_transformer` / :func:`flux_transformer`: the diffusers transformers, and :func:`loom_mmdit` /
  :func:`loom_flux` the same weights in Loom's modules (through the single-file renames of test_mmdit / test_flux).

Every parameter is random (fan-in scaled; RMSNorm weights around 1), including the zero-initialised ControlNet
blocks and hint embeddings, so no part of a net can go missing unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import diffusers
import torch
from safetensors.torch import save_file
from torch import Tensor

from engine.backend.flux import Flux, flux_config_from_state_dict
from engine.backend.mmdit import MMDiT
from tests.backend.test_flux import RENAMES, STACKS, _stack, diffusers_flux_to_single_file
from tests.backend.test_mmdit import diffusers_to_single_file

#: SD3: hidden 128 (two 64-wide heads, the width Loom assumes without qk-norm), T5 width 32, pooled 48.
SD3_SHAPE: dict[str, Any] = {"sample_size": 32, "patch_size": 2, "in_channels": 16, "attention_head_dim": 64,
                             "num_attention_heads": 2, "joint_attention_dim": 32, "caption_projection_dim": 128,
                             "pooled_projection_dim": 48, "out_channels": 16, "pos_embed_max_size": 16}
#: Flux: hidden 64 (two 32-wide heads, RoPE split (4, 14, 14): Loom's rule for 32-wide heads), pooled 24.
FLUX_AXES = (4, 14, 14)
FLUX_SHAPE: dict[str, Any] = {"patch_size": 1, "in_channels": 64, "attention_head_dim": 32, "num_attention_heads": 2,
                              "joint_attention_dim": 32, "pooled_projection_dim": 24, "guidance_embeds": True,
                              "axes_dims_rope": FLUX_AXES}


def randomized(model: Any, seed: int) -> Any:
    """Every parameter random: RMSNorm weights ``1 + 0.3 N``, the rest ``N / sqrt(fan_in)`` (biases 0.1 N)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if re.search(r"norm_(added_)?[qk]\.weight$", name):
                param.copy_(1 + 0.3 * noise)
            elif param.ndim > 1:
                param.copy_(noise / param[0].numel() ** 0.5)
            else:
                param.copy_(0.1 * noise)
    return model.eval()


def sd3_controlnet(seed: int, layers: int = 2, **extra: Any) -> Any:
    return randomized(diffusers.SD3ControlNetModel(**SD3_SHAPE, num_layers=layers, **extra), seed)


def sd3_transformer(seed: int, layers: int = 4, **extra: Any) -> Any:
    return randomized(diffusers.SD3Transformer2DModel(**SD3_SHAPE, num_layers=layers, **extra), seed)


def flux_controlnet(seed: int, layers: int = 2, singles: int = 2, **extra: Any) -> Any:
    shape = {**FLUX_SHAPE, **extra}
    return randomized(diffusers.FluxControlNetModel(**shape, num_layers=layers, num_single_layers=singles), seed)


def flux_transformer(seed: int, layers: int = 3, singles: int = 4) -> Any:
    return randomized(diffusers.FluxTransformer2DModel(**FLUX_SHAPE, num_layers=layers, num_single_layers=singles),
                      seed)


def write_diffusers(model: Any, path: Path) -> Path:
    """The state dict as it is (SD3: with the position table, a persistent buffer of these nets)."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_xlabs(model: Any, path: Path) -> Path:
    """A pixel-hint FluxControlNetModel in XLabs' layout: Flux checkpoint names for the transformer part,
    ``input_hint_block.{0, 2, ..., 14}`` for the hint convs, ``pos_embed_input`` for ``controlnet_x_embedder``."""
    state = dict(model.state_dict())
    out: dict[str, Tensor] = {}
    for key in list(state):
        if m := re.fullmatch(r"input_hint_block\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)", key):
            index = 0 if m.group(1) == "conv_in" else 14 if m.group(1) == "conv_out" else 2 * (int(m.group(2)) + 1)
            out[f"input_hint_block.{index}.{m.group(3)}"] = state.pop(key)
        elif key.startswith("controlnet_x_embedder."):
            out[key.replace("controlnet_x_embedder.", "pos_embed_input.")] = state.pop(key)
        elif key.startswith("controlnet_blocks."):
            out[key] = state.pop(key)
    for group, target, parts in STACKS:
        _stack(state, out, group, target, parts)
    for key in list(state):
        for pattern, replacement in RENAMES:
            new, hits = re.subn(rf"^{pattern}", replacement, key)
            if hits:
                out[new] = state.pop(key)
                break
    assert not state, f"unmapped keys: {sorted(state)}"
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def loom_mmdit(reference: Any) -> MMDiT:
    state = dict(reference.state_dict())
    single = diffusers_to_single_file(state, reference.config.num_layers)
    return MMDiT.from_state_dict({k: v.clone() for k, v in single.items()})


def loom_flux(reference: Any) -> Flux:
    single = diffusers_flux_to_single_file(reference.state_dict())
    model = Flux(flux_config_from_state_dict(single, axes_dim=FLUX_AXES))
    model.load_state_dict(single, strict=True)
    return model.eval()
