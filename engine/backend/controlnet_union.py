"""Union ControlNets (xinsir's ControlNet++ / "controlnet-union-sdxl-1.0" and ProMax): one ControlNet
for many hint kinds, told which kind it sees.

On top of an LDM :class:`~engine.backend.controlnet.ControlNet` a union net holds:

* ``control_add_embedding.linear_1`` / ``linear_2``: the control type as a one-hot vector over
  ``num_control_type`` kinds, each entry embedded sinusoidally (``in_dim`` wide, cos first) and
  concatenated, through Linear-SiLU-Linear; added to the time embedding. "auto" (no type) embeds
  the all-zero vector.
* ``task_embedding`` ``[num_control_type, model_channels]``: added to the spatial mean of the hint
  block's features, giving one token per hint;
* ``transformer_layes.N``: pre-norm transformer blocks (``ln_1``, ``attn.in_proj`` / ``attn.out_proj``,
  ``ln_2``, ``mlp.c_fc`` / ``mlp.c_proj`` with QuickGELU) over those tokens;
* ``spatial_ch_projs``: a Linear whose output (per channel) is added to the hint features.

With a type set, the guided hint added after the input conv is ``features + spatial_ch_projs(token)``;
"auto" uses the plain hint features (ComfyUI's behaviour). Attention runs over the hint tokens of
each image (ComfyUI's reading). diffusers' ``ControlNetUnionModel`` also appends a token of the input
conv's output but attends across the batch axis, so for a batch of one both give the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.unet import embed_timesteps, timestep_embedding

__all__ = ["UNION_TYPES", "UnionConfig", "UnionControlNet", "union_type_index"]

#: ComfyUI's union control types and their indices (SetUnionControlNetType's choices after "auto").
UNION_TYPES: dict[str, int] = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}

def union_type_index(name: str) -> int | None:
    """The index of a union type name; None for "auto"."""
    if name == "auto":
        return None
    if name not in UNION_TYPES:
        raise ValueError(f"unknown union ControlNet type {name!r}; choose auto or one of {', '.join(UNION_TYPES)}")
    return UNION_TYPES[name]


@dataclass(frozen=True)
class UnionConfig:
    """The union parts' sizes: ``num_control_type`` kinds, ``type_dim`` sinusoid width per kind,
    ``layers`` transformer blocks of ``heads`` heads (8 in every released file; not in the weights)."""

    num_control_type: int
    type_dim: int
    layers: int
    heads: int = 8

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> UnionConfig:
        """Sizes from LDM-named shapes (``task_embedding``, ``control_add_embedding.linear_1.weight``, ...)."""
        types, width = shapes["task_embedding"]
        in_width = shapes["control_add_embedding.linear_1.weight"][1]
        layers = len({k.split(".")[1] for k in shapes if k.startswith("transformer_layes.")})
        heads = 8 if width % 8 == 0 else 1
        return cls(types, in_width // types, layers, heads)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        q, k, v = (t.reshape(batch, tokens, self.heads, -1).transpose(1, 2) for t in self.in_proj(x).chunk(3, -1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class _Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = _Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _Mlp(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _TypeEmbedding(nn.Module):
    def __init__(self, union: UnionConfig, time_width: int) -> None:
        super().__init__()
        self.union = union
        self.linear_1 = nn.Linear(union.type_dim * union.num_control_type, time_width)
        self.linear_2 = nn.Linear(time_width, time_width)

    def forward(self, control_type: int | None, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        one_hot = torch.zeros(self.union.num_control_type, device=device)
        if control_type is not None:
            one_hot[control_type] = 1.0
        sines = timestep_embedding(one_hot, self.union.type_dim).reshape(1, -1).to(dtype)
        return self.linear_2(F.silu(self.linear_1(sines))).expand(batch, -1)


class UnionControlNet(ControlNet):
    """A ControlNet with the union parts; see the module docstring. ``forward`` takes ``control_type``
    (an index of :data:`UNION_TYPES`, or None for "auto")."""

    def __init__(self, config: ControlNetConfig, union: UnionConfig) -> None:
        super().__init__(config)
        width = config.unet.model_channels
        self.union = union
        self.task_embedding = nn.Parameter(torch.zeros(union.num_control_type, width))
        self.transformer_layes = nn.Sequential(*(_Block(width, union.heads) for _ in range(union.layers)))
        self.spatial_ch_projs = nn.Linear(width, width)
        self.control_add_embedding = _TypeEmbedding(union, cast(nn.Linear, self.time_embed[2]).out_features)

    def _guided(self, features: Tensor, control_type: int | None) -> Tensor:
        if control_type is None:
            return features
        token = features.mean(dim=(2, 3)) + self.task_embedding[control_type].to(features.dtype)
        mixed = self.transformer_layes(token.unsqueeze(1))
        return features + self.spatial_ch_projs(mixed[:, 0])[:, :, None, None]

    def forward(
        self, x: Tensor, hint: Tensor | None, timesteps: Tensor, context: Tensor | None, y: Tensor | None = None,
        *, hint_features: Tensor | None = None, control_type: int | None = None,
    ) -> dict[str, list[Tensor]]:
        """As :meth:`ControlNet.forward`, for the union ``control_type`` (None: "auto")."""
        if control_type is not None and not 0 <= control_type < self.union.num_control_type:
            raise ValueError(f"this union ControlNet knows {self.union.num_control_type} control types; "
                             f"type index {control_type} is not one of them: pick another type")
        c = self.config.unet
        dtype = cast(nn.Linear, self.time_embed[0]).weight.dtype
        emb = embed_timesteps(self.time_embed, getattr(self, "label_emb", None), c.model_channels, timesteps, y)
        emb = emb + self.control_add_embedding(control_type, x.shape[0], dtype, x.device)
        if context is not None:
            context = context.to(dtype)
        if hint_features is None:
            if hint is None:
                raise ValueError("pass the hint image or its hint_features")
            hint_features = self.encode_hint(hint)
        guided: Tensor | None = self._guided(hint_features.to(dtype), control_type)
        h = x.to(dtype)
        outputs: list[Tensor] = []
        for block, zero_conv in zip(self.input_blocks, self.zero_convs, strict=True):
            h = block(h, emb, context)
            if guided is not None:
                if guided.shape[-2:] != h.shape[-2:]:
                    raise ValueError(f"the hint is {tuple(8 * d for d in guided.shape[-2:])} pixels but the latent "
                                     f"is {tuple(x.shape[-2:])}: the hint must be 8x the latent size")
                h = h + guided
                guided = None
            outputs.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        return {"output": outputs, "middle": [self.middle_block_out(h)]}
