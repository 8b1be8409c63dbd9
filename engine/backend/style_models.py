"""Style models: vision tokens -> extra context tokens appended to a conditioning (StyleModelApply).

Two kinds, told apart by their keys:

* the T2I-Adapter style model (``style_embedding``, ``transformer_layes.N.*``, ``proj``): ``num_token``
  learned tokens are appended to the CLIP vision ``last_hidden_state``, the sequence goes through
  ``ln_pre``, ``n_layes`` CLIP residual attention blocks (torch ``MultiheadAttention``, QuickGELU MLP)
  and ``ln_post`` on the learned tokens only, then ``@ proj`` (width -> context_dim). Sizes come from
  the shapes; the head count is not in the file (ComfyUI uses 8).
* Flux Redux (``redux_up`` / ``redux_down``): ``redux_down(silu(redux_up(tokens)))`` on every token of a
  SigLIP ``last_hidden_state`` (so400m at 384 px: 729 tokens of 1152 -> 729 tokens of T5's 4096, appended to
  Flux's T5 context; the release's hidden width is 3 x 4096).

Each model records the token width it takes (``input_width``) and which vision tower gives it (``tower``),
so StyleModelApply can name the right CLIP vision file when it is handed another tower's output.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["ReduxImageEncoder", "StyleAdapter", "apply_style", "build_style_model"]

#: ComfyUI's head count for the T2I-Adapter style model (not recorded in the file).
STYLE_HEADS = 8


class _QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm block on ``[L, N, D]`` sequences (parameter names as in the style model file)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", _QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """The T2I-Adapter style model: ``[N, tokens, width]`` vision tokens -> ``[N, num_token, context_dim]``."""

    tower = "CLIP ViT-L/14 (e.g. clip_vision_l.safetensors)"

    def __init__(self, width: int, context_dim: int, heads: int, layers: int, num_token: int) -> None:
        super().__init__()
        self.input_width = width
        self.transformer_layes = nn.Sequential(*[_ResidualAttentionBlock(width, heads) for _ in range(layers)])
        self.num_token = num_token
        self.style_embedding = nn.Parameter(torch.zeros(1, num_token, width))
        self.ln_post = nn.LayerNorm(width)
        self.ln_pre = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, tokens: Tensor) -> Tensor:
        style = self.style_embedding.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = self.ln_pre(torch.cat([tokens, style], dim=1)).permute(1, 0, 2)
        x = self.transformer_layes(x).permute(1, 0, 2)
        return self.ln_post(x[:, -self.num_token:, :]) @ self.proj


class ReduxImageEncoder(nn.Module):
    """Flux Redux: SigLIP tokens -> T5-width context tokens."""

    tower = "SigLIP so400m/14 at 384 px (sigclip_vision_patch14_384.safetensors)"

    def __init__(self, redux_dim: int, txt_dim: int, hidden: int) -> None:
        super().__init__()
        self.input_width = redux_dim
        self.redux_up = nn.Linear(redux_dim, hidden)
        self.redux_down = nn.Linear(hidden, txt_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.redux_down(nn.functional.silu(self.redux_up(tokens)))


def build_style_model(shapes: Mapping[str, tuple[int, ...]]) -> nn.Module:
    """An empty style model of the structure ``shapes`` (a file's ``{key: shape}``) describes."""
    if "style_embedding" in shapes:
        _, num_token, width = shapes["style_embedding"]
        layers = len({k.split(".")[1] for k in shapes if k.startswith("transformer_layes.")})
        return StyleAdapter(width, shapes["proj"][1], STYLE_HEADS, layers, num_token)
    if "redux_down.weight" in shapes:
        hidden, redux_dim = shapes["redux_up.weight"]
        return ReduxImageEncoder(redux_dim, shapes["redux_down.weight"][0], hidden)
    raise ValueError("not a style model: it has neither 'style_embedding' (T2I-Adapter style) "
                     "nor 'redux_down.weight' (Flux Redux)")


def apply_style(conditioning: list[list[object]], tokens: Tensor, strength: float,
                strength_type: str) -> list[list[object]]:
    """Append the style tokens (``[N, T, C]``, flattened to one ``[1, N*T, C]`` row) to every entry's
    embedding; ``multiply`` scales them by ``strength``. Extras are copied, not shared."""
    if strength_type not in ("multiply", "attn_bias"):
        raise ValueError(f"unknown strength_type {strength_type!r}: use 'multiply' or 'attn_bias'")
    cond = tokens.flatten(0, 1).unsqueeze(0)
    if strength_type == "multiply":
        cond = cond * strength
    out: list[list[object]] = []
    for embedding, extras in conditioning:
        assert isinstance(embedding, Tensor) and isinstance(extras, dict)
        extra = cond.to(device=embedding.device, dtype=embedding.dtype).expand(embedding.shape[0], -1, -1)
        out.append([torch.cat([embedding, extra], dim=1), dict(extras)])
    return out
