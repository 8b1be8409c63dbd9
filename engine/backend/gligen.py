"""GLIGEN for SD1: grounding boxes with text, through a position net and gated self-attention fusers.

A GLIGEN file holds two parts (read for facts from the GLIGEN paper's layout, ComfyUI's gligen.py
and diffusers' GLIGENTextBoundingboxProjection / GatedSelfAttentionDense; written anew):

* the position net: each box (x1, y1, x2, y2 as fractions of the latent) gets a Fourier embedding
  (``freqs`` bands ``temperature ** (i / freqs)``, temperature 100; per band the sines of the four
  coordinates, then their cosines), padded objects get the learned null text / null position
  features instead, and an MLP ``[text; position] -> 512 -> 512 -> object dim`` with SiLU makes one
  token per object (up to :data:`MAX_OBJECTS`);
* one fuser per UNet transformer block: the objects go through a linear to the block's width, a
  self-attention runs over ``[visual tokens; objects]`` (layer norm first) and only the visual part
  is kept, then a GEGLU feed-forward; each is added through its gate ``tanh(alpha)``::

      x = x + tanh(alpha_attn) * attn(norm1([x; linear(objs)]))[:, :N_visual]
      x = x + tanh(alpha_dense) * ff(norm2(x))

  applied right after the block's self-attention residual (the UNet's ``middle_patch`` point,
  ComfyUI's name, see engine.backend.unet).

How it reaches sampling: GLIGENTextBoxApply stores ``("position", Gligen, [(pooled, h, w, y, x),
...])`` under ``"gligen"`` in conditioning extras (latent pixels, as ComfyUI); engine.backend.
conditioning keeps it on the entry's CondSpec. CFG batches cond and uncond entries into one UNet
call, so :func:`gligen_patch` builds, per UNet call, the objects for exactly the batch rows whose
entry carries ``"gligen"`` (``PatchContext.rows`` says which entry owns which rows) and the fuser
runs on those rows only (an index select, the result written back into a copy): rows without
GLIGEN, such as the uncond rows, come out bit for bit as without the patch, and a call where no
entry has GLIGEN installs nothing. Boxes are normalised by the call's latent width and height (the
area's size for an area entry, as ComfyUI's ``set_position`` sees the cropped input).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

#: Objects per image the position net takes (GLIGEN's max_objs).
MAX_OBJECTS = 30
FOURIER_TEMPERATURE = 100.0
LAYER_NORM_EPS = 1e-5
#: The conditioning extras key (ComfyUI's).
GLIGEN_KEY = "gligen"

Linear = tuple[Tensor, Tensor | None]
#: ("input" | "middle" | "output", block index, transformer block index) as PatchContext names blocks.
BlockKey = tuple[str, int, int]


def _to(pair: Linear, like: Tensor) -> Linear:
    weight, bias = pair
    return weight.to(like), None if bias is None else bias.to(like)


def fourier_embed(boxes: Tensor, freqs: int, temperature: float = FOURIER_TEMPERATURE) -> Tensor:
    """[..., 4] -> [..., 8 * freqs]: per band ``f``, ``sin(f * boxes)`` then ``cos(f * boxes)``."""
    bands = temperature ** (torch.arange(freqs, dtype=boxes.dtype, device=boxes.device) / freqs)
    parts = []
    for band in bands:
        parts += [torch.sin(band * boxes), torch.cos(band * boxes)]
    return torch.cat(parts, dim=-1)


@dataclass(frozen=True, eq=False)
class PositionNet:
    """The grounding tokens of boxes and their texts' pooled embeddings (``linears``: three (w, b))."""

    null_text: Tensor
    null_position: Tensor
    linears: tuple[Linear, Linear, Linear]

    @property
    def text_dim(self) -> int:
        return int(self.null_text.shape[0])

    @property
    def freqs(self) -> int:
        return int(self.null_position.shape[0]) // 8

    @property
    def object_dim(self) -> int:
        return int(self.linears[-1][0].shape[0])

    def __call__(self, boxes: Tensor, masks: Tensor, embeddings: Tensor) -> Tensor:
        """boxes [B, N, 4], masks [B, N] (1 = a real object), embeddings [B, N, text_dim] -> [B, N, object_dim]."""
        like = embeddings
        mask = masks.to(like).unsqueeze(-1)
        position = fourier_embed(boxes.to(like), self.freqs)
        text = embeddings * mask + (1 - mask) * self.null_text.to(like).view(1, 1, -1)
        position = position * mask + (1 - mask) * self.null_position.to(like).view(1, 1, -1)
        h = torch.cat([text, position], dim=-1)
        for index, pair in enumerate(self.linears):
            h = F.linear(h, *_to(pair, like))
            if index < len(self.linears) - 1:
                h = F.silu(h)
        return h


@dataclass(frozen=True, eq=False)
class GatedFuser:
    """One transformer block's gated self-attention over visual tokens and grounding objects."""

    linear: Linear
    norm1: Linear
    norm2: Linear
    to_q: Tensor
    to_k: Tensor
    to_v: Tensor
    to_out: Linear
    ff_in: Linear
    ff_out: Linear
    alpha_attn: Tensor
    alpha_dense: Tensor
    heads: int

    @property
    def width(self) -> int:
        return int(self.linear[0].shape[0])

    def attention(self, tokens: Tensor) -> Tensor:
        b, n, _ = tokens.shape
        q, k, v = (F.linear(tokens, w.to(tokens)).view(b, n, self.heads, -1).transpose(1, 2)
                   for w in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return F.linear(out, *_to(self.to_out, tokens))

    def feed_forward(self, x: Tensor) -> Tensor:
        hidden, gate = F.linear(x, *_to(self.ff_in, x)).chunk(2, dim=-1)
        return F.linear(hidden * F.gelu(gate), *_to(self.ff_out, x))

    def __call__(self, x: Tensor, objects: Tensor) -> Tensor:
        """x [B, N, width] visual tokens, objects [B, M, object_dim] -> x with the gated updates."""
        visual = x.shape[1]
        objs = F.linear(objects.to(x), *_to(self.linear, x))
        tokens = F.layer_norm(torch.cat([x, objs], dim=1), (self.width,), *_to(self.norm1, x), LAYER_NORM_EPS)
        x = x + torch.tanh(self.alpha_attn.to(x)) * self.attention(tokens)[:, :visual]
        normed = F.layer_norm(x, (self.width,), *_to(self.norm2, x), LAYER_NORM_EPS)
        return x + torch.tanh(self.alpha_dense.to(x)) * self.feed_forward(normed)


@dataclass(frozen=True, eq=False)
class Gligen:
    """A GLIGEN model (GLIGEN edges): the position net and the fusers by transformer block."""

    name: str
    position_net: PositionNet
    fusers: Mapping[BlockKey, GatedFuser]

    def objects(self, params: Sequence[Sequence[Any]], height: int, width: int, like: Tensor) -> Tensor:
        """The [1, MAX_OBJECTS, object_dim] tokens of ``(pooled, h, w, y, x)`` boxes on a height x width latent."""
        count = min(len(params), MAX_OBJECTS)
        if len(params) > MAX_OBJECTS:
            log.warning("GLIGEN %s: %d boxes, only the first %d are used", self.name, len(params), MAX_OBJECTS)
        boxes = torch.zeros(1, MAX_OBJECTS, 4, dtype=like.dtype, device=like.device)
        masks = torch.zeros(1, MAX_OBJECTS, dtype=like.dtype, device=like.device)
        texts = torch.zeros(1, MAX_OBJECTS, self.position_net.text_dim, dtype=like.dtype, device=like.device)
        for i, (pooled, h, w, y, x) in enumerate(params[:count]):
            boxes[0, i] = torch.tensor((x / width, y / height, (x + w) / width, (y + h) / height))
            masks[0, i] = 1.0
            texts[0, i] = torch.as_tensor(pooled).reshape(-1).to(like)
        return self.position_net(boxes, masks, texts)


@dataclass
class _GligenCall:
    """One UNet call's ``middle_patch``: per GLIGEN model, its rows and their objects."""

    groups: list[tuple[Gligen, Tensor, Tensor]]  # (model, row indices [R], objects [R, M, D])

    def __call__(self, x: Tensor, ctx: Any) -> Tensor:
        kind, index = ctx.block
        key = (kind, int(index), int(ctx.block_index))
        out = x
        for model, rows, objects in self.groups:
            fuser = model.fusers.get(key)
            if fuser is None or fuser.width != x.shape[-1]:
                continue
            if out is x:
                out = x.clone()
            out[rows] = fuser(x[rows], objects)
        return out


def gligen_patch(rows: Sequence[tuple[Any, int]], latent_shape: Sequence[int], like: Tensor) -> _GligenCall | None:
    """The ``middle_patch`` of one UNet call whose batch is made of ``rows`` ((entry, row count) in
    order, entries with a ``gligen`` attribute), or None when no entry carries GLIGEN."""
    height, width = int(latent_shape[-2]), int(latent_shape[-1])
    by_model: dict[int, tuple[Gligen, list[int], list[Tensor]]] = {}
    start = 0
    for entry, count in rows:
        value = getattr(entry, GLIGEN_KEY, None)
        if value is not None and value[0] == "position" and value[2]:
            model: Gligen = value[1]
            objects = model.objects(value[2], height, width, like)
            slot = by_model.setdefault(id(model), (model, [], []))
            slot[1].extend(range(start, start + count))
            slot[2].append(objects.expand(count, -1, -1))
        start += count
    if not by_model:
        return None
    groups = [(model, torch.tensor(indices, device=like.device), torch.cat(objs))
              for model, indices, objs in by_model.values()]
    return _GligenCall(groups)


def heads_for(object_dim: int, inner_dim: int) -> int:
    """Attention heads of a fuser: 8 for SD1 files (768-wide objects), else 64-wide heads (ComfyUI's rule)."""
    if object_dim == 768:
        return 8
    return max(1, inner_dim // 64)
