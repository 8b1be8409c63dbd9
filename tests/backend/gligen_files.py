"""GLIGEN files for tests, built from diffusers' own GLIGEN modules (an independent implementation)
with random weights and written in the GLIGEN checkpoint layout (``position_net.*`` and
``<block>.transformer_blocks.K.fuser.*`` beside the UNet's own key names)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from diffusers.models.attention import GatedSelfAttentionDense
from diffusers.models.embeddings import GLIGENTextBoundingboxProjection
from safetensors.torch import save_file

from engine.backend.gligen import heads_for

_ATTN1 = re.compile(r"((?:input_blocks\.\d+|middle_block|output_blocks\.\d+)\.\d+\.transformer_blocks\.\d+)"
                    r"\.attn1\.to_q\.weight$")


def transformer_blocks(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, int]:
    """UNet transformer block prefix (``input_blocks.1.1.transformer_blocks.0``) -> width, from UNet keys."""
    found = {}
    for key, shape in shapes:
        match = _ATTN1.search(key)
        if match is not None:
            found[match[1]] = int(shape[0])
    return found


def position_net(text_dim: int, object_dim: int, seed: int) -> GLIGENTextBoundingboxProjection:
    torch.manual_seed(seed)
    net = GLIGENTextBoundingboxProjection(positive_len=text_dim, out_dim=object_dim, feature_type="text-only")
    with torch.no_grad():  # the null features start at zero in diffusers; give them values to test with
        net.null_positive_feature.normal_()
        net.null_position_feature.normal_()
    return net.eval()


def fuser(width: int, object_dim: int, seed: int, alpha: float) -> GatedSelfAttentionDense:
    torch.manual_seed(seed)
    heads = heads_for(object_dim, width)
    module = GatedSelfAttentionDense(width, object_dim, heads, width // heads)
    with torch.no_grad():
        module.alpha_attn.fill_(alpha)
        module.alpha_dense.fill_(-alpha)
        for norm in (module.norm1, module.norm2):
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    return module.eval()


def gligen_state(blocks: Mapping[str, int], text_dim: int, object_dim: int, *, alpha: float, seed: int = 0,
                 prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """A GLIGEN state dict with a fuser for each of ``blocks`` (prefix -> width)."""
    state = {f"position_net.{k}": v for k, v in position_net(text_dim, object_dim, seed).state_dict().items()}
    for index, (block, width) in enumerate(sorted(blocks.items())):
        module = fuser(width, object_dim, seed + 1 + index, alpha)
        state.update({f"{prefix}{block}.fuser.{k}": v for k, v in module.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def write_safetensors(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(state), str(path))


def write_pth(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": dict(state)}, str(path))
