"""PhotoMaker v1's ID encoder (TencentARC): a CLIP vision tower with two projections and a fuse module
that rewrites the class word's token embedding in an SDXL text embedding.

The image's pooled CLIP vision feature goes through ``visual_projection`` (768 wide for ViT-L/14) and
``visual_projection_2`` (1280); the two side by side are the ID embedding ``e`` (2048 = SDXL's text width).
For the class word's token embedding ``p`` the fuse module computes::

    h = mlp1(concat(p, e)) + p          # mlp1: LayerNorm, Linear(2D -> D), GELU, Linear(D -> D)
    h = mlp2(h) + h                     # mlp2: LayerNorm, Linear, GELU, Linear, with the residual
    p' = LayerNorm(h)

and ``p'`` replaces ``p``; every other token is left as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FuseModule", "PhotoMakerIDEncoder", "PhotoMakerMLP"]


class PhotoMakerMLP(nn.Module):
    """LayerNorm, Linear, GELU, Linear; plus the input when ``residual``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, residual: bool) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(nn.functional.gelu(self.fc1(self.layernorm(x))))
        return out + x if self.residual else out


class FuseModule(nn.Module):
    """The fuse of a prompt token embedding with an ID embedding of the same width (see the module docstring)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.mlp1 = PhotoMakerMLP(embed_dim * 2, embed_dim, embed_dim, residual=False)
        self.mlp2 = PhotoMakerMLP(embed_dim, embed_dim, embed_dim, residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, prompt_embeds: Tensor, id_embeds: Tensor) -> Tensor:
        stacked = self.mlp1(torch.cat([prompt_embeds, id_embeds], dim=-1)) + prompt_embeds
        out: Tensor = self.layer_norm(self.mlp2(stacked))
        return out


class PhotoMakerIDEncoder(nn.Module):
    """A CLIP vision tower (transformers' ``CLIPVisionTransformer`` as ``vision_model`` and its
    ``visual_projection``), ``visual_projection_2`` and ``fuse_module``; ``image_size`` is the tower's input size."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module, projection_2: nn.Module,
                 fuse_module: FuseModule, image_size: int) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.visual_projection_2 = projection_2
        self.fuse_module = fuse_module
        self.image_size = image_size

    @property
    def embed_dim(self) -> int:
        return int(self.fuse_module.layer_norm.normalized_shape[0])

    def id_embeds(self, pixel_values: Tensor) -> Tensor:
        """``[B, proj + proj_2]``: both projections of the pooled (post-LayerNorm class token) feature."""
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)

    def forward(self, prompt_embeds: Tensor, pixel_values: Tensor, position: int) -> Tensor:
        """``prompt_embeds`` ``[B, T, D]`` with token ``position`` fused with the first image's ID embedding."""
        embeds = self.id_embeds(pixel_values[:1]).to(prompt_embeds.dtype)
        out = prompt_embeds.clone()
        token = prompt_embeds[:, position]
        out[:, position] = self.fuse_module(token, embeds.expand(token.shape[0], -1))
        return out
