"""Building blocks shared by the UNet and the VAE, and weight loading into meta-built modules.

* :func:`attention` is multi-head attention through ``torch.nn.functional.scaled_dot_product_attention``
  on ``[batch, tokens, heads * dim_head]`` tensors (the layout the linear projections produce).
* :class:`SpatialTransformer` is the cross-attention block of the latent-diffusion UNet: GroupNorm
  (eps 1e-6), a 1x1-conv or linear ``proj_in``, ``depth`` x :class:`BasicTransformerBlock`
  (self-attention, cross-attention over the text context, GEGLU feed-forward, each pre-LayerNorm
  and residual), ``proj_out``, and a residual over the whole block. Attribute names equal the
  checkpoint keys (``norm``, ``proj_in``, ``transformer_blocks.K.attn1.to_q``, ``ff.net.0.proj``, ...).
* :func:`load_weights` assigns tensors one at a time into a module built on the meta device, which
  is how a checkpoint is loaded without a second full copy in memory.

The layer structure follows the published latent-diffusion architecture (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models") as described by the key layout of
real checkpoints; it is written here from that description, not copied from any implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.packed_layers import PackedConv2d, PackedLinear

if TYPE_CHECKING:
    from engine.backend.unet import PatchContext

__all__ = [
    "BasicTransformerBlock",
    "CrossAttention",
    "FeedForward",
    "GEGLU",
    "SpatialTransformer",
    "attention",
    "attention_with_probs",
    "load_weights",
]


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Scaled dot-product attention over ``heads`` heads.

    ``q`` is ``[B, N, heads * d]``, ``k`` and ``v`` are ``[B, M, heads * d]``; returns ``[B, N, heads * d]``.
    The softmax scale is ``d ** -0.5`` (the SDPA default).
    """
    batch, tokens, inner = q.shape
    dim_head = inner // heads
    q = q.view(batch, tokens, heads, dim_head).transpose(1, 2)
    k = k.view(batch, -1, heads, dim_head).transpose(1, 2)
    v = v.view(batch, -1, heads, dim_head).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, tokens, inner)


def attention_with_probs(q: Tensor, k: Tensor, v: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """:func:`attention` computed explicitly, also returning the softmax probabilities
    ``[B * heads, N, M]`` (batch-major, then heads): what self-attention guidance records."""
    batch, tokens, inner = q.shape
    dim_head = inner // heads
    q = q.view(batch, tokens, heads, dim_head).transpose(1, 2)
    k = k.view(batch, -1, heads, dim_head).transpose(1, 2)
    v = v.view(batch, -1, heads, dim_head).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) * dim_head ** -0.5).softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(batch, tokens, inner)
    return out, probs.reshape(batch * heads, tokens, -1)


def _scaled_linear(layer: nn.Linear, x: Tensor, scale: float) -> Tensor:
    """``layer(x)`` with its weight and bias multiplied by ``scale`` (stored weights untouched)."""
    if scale == 1.0:
        return layer(x)
    if isinstance(layer, PackedLinear):  # its weight is packed: scale the output, the same up to rounding
        return layer(x) * scale
    bias = None if layer.bias is None else layer.bias * scale
    return F.linear(x, layer.weight * scale, bias)


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None (keys ``to_q/to_k/to_v/to_out.0``)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        # The original wraps the output projection with a dropout: index 0 keeps the checkpoint key.
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        source = x if context is None else context
        out = attention(self.to_q(x), self.to_k(source), self.to_v(source), self.heads)
        return self.to_out[0](out)

    def patched(self, x: Tensor, key_source: Tensor, value_source: Tensor, patches: PatchContext,
                name: str) -> Tensor:
        """The attention under the patches of ``name`` ("attn1" / "attn2"): the ``{name}_multiply``
        weight multipliers and the first ``{name}_replace`` function that answers (see engine.backend.unet)."""
        sq, sk, sv, so = patches.weight_scale(name)
        q = _scaled_linear(self.to_q, x, sq)
        k = _scaled_linear(self.to_k, key_source, sk)
        v = _scaled_linear(self.to_v, value_source, sv)
        out = None
        for replace in patches.get(f"{name}_replace"):
            out = replace(q, k, v, patches)
            if out is not None:
                break
        if out is None:
            out = attention(q, k, v, self.heads)
        return _scaled_linear(cast(nn.Linear, self.to_out[0]), out, so)


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): one projection to twice the width, ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0`` = GEGLU to 4x width, ``net.1`` = (dropout, identity here), ``net.2`` = projection back."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to ``context``, GEGLU feed-forward.

    ``context_attn1`` (the SD x4 upscaler's first three levels, LDM's ``disable_self_attn``): the first
    attention reads the text context too instead of the tokens themselves (``attn1.to_k`` takes
    ``context_dim`` inputs).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, context_attn1: bool = False) -> None:
        super().__init__()
        self.context_attn1 = context_attn1
        self.attn1 = CrossAttention(dim, context_dim if context_attn1 else dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, patches: PatchContext | None = None) -> Tensor:
        if patches is not None:
            return self._patched(x, context, patches)
        x = self.attn1(self.norm1(x), context if self.context_attn1 else None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x

    def _patched(self, x: Tensor, context: Tensor, p: PatchContext) -> Tensor:
        """The same block with ComfyUI's attention patch points (engine.backend.unet lists them)."""
        p.heads, p.dim_head = self.attn1.heads, x.shape[-1] // self.attn1.heads
        n = self.norm1(x)
        key, value = (context, context) if self.context_attn1 else (n, n)
        for fn in p.get("attn1_patch"):
            n, key, value = fn(n, key, value, p)
        n = self.attn1.patched(n, key, value, p, "attn1")
        for fn in p.get("attn1_output_patch"):
            n = fn(n, p)
        x = n + x
        for fn in p.get("middle_patch"):
            x = fn(x, p)
        n = self.norm2(x)
        key, value = context, context
        for fn in p.get("attn2_patch"):
            n, key, value = fn(n, key, value, p)
        n = self.attn2.patched(n, key, value, p, "attn2")
        for fn in p.get("attn2_output_patch"):
            n = fn(n, p)
        x = n + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on ``context`` ``[B, T, context_dim]``.

    ``use_linear`` selects the projection layout: SD1.x stores ``proj_in``/``proj_out`` as 1x1 convs
    (weight ``[C, C, 1, 1]``), SD2.x and SDXL as linear layers (``[C, C]``). Both are applied the same
    way, as a matrix product over the channel axis of the token sequence (a 1x1 conv is exactly that),
    so the two layouts cost the same.
    """

    def __init__(
        self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool,
        context_attn1: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in: nn.Linear | nn.Conv2d
        self.proj_out: nn.Linear | nn.Conv2d
        if use_linear:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, context_attn1) for _ in range(depth)
        )

    def forward(self, x: Tensor, context: Tensor, patches: PatchContext | None = None) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        # One copy to channels-last tokens [B, H*W, C]; the projections work on that layout.
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        h = _project_tokens(self.proj_in, h)
        for index, block in enumerate(self.transformer_blocks):
            if patches is None:
                h = block(h, context)
            else:
                patches.block_index = index
                h = block(h, context, patches)
        h = _project_tokens(self.proj_out, h)
        h = h.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return x + h


def _project_tokens(layer: nn.Linear | nn.Conv2d, tokens: Tensor) -> Tensor:
    """A linear layer, or a 1x1 conv as the matrix product over the channel axis it is, on ``[B, N, C]``."""
    if isinstance(layer, nn.Linear):
        return layer(tokens)
    if isinstance(layer, PackedConv2d):
        return layer.project_tokens(tokens)
    return F.linear(tokens, layer.weight.flatten(1), layer.bias)


def load_weights(
    module: nn.Module,
    tensors: Iterable[tuple[str, Tensor]],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    adapt: Callable[[str, Tensor, tuple[int, ...]], Tensor] | None = None,
) -> None:
    """Assign ``(name, tensor)`` pairs into ``module`` one at a time, converting each on the way.

    Meant for a module built on the meta device (``with torch.device("meta"): ...``): each parameter
    is replaced by the converted tensor, so peak memory is the finished model plus one source tensor.
    ``dtype`` applies to floating-point tensors only. ``adapt(name, tensor, expected_shape)`` may
    reshape a tensor stored in another layout (the VAE uses it for 2-D attention weights).

    Raises ``KeyError`` for a name the module does not have, ``ValueError`` for a shape mismatch, and
    ``ValueError`` listing every parameter still on the meta device at the end (a missing key).
    """
    expected: dict[str, Tensor] = dict(module.named_parameters())
    expected.update(module.named_buffers())
    seen: set[str] = set()
    for name, tensor in tensors:
        if name not in expected:
            raise KeyError(f"unexpected weight {name!r}: {type(module).__name__} has no such parameter")
        target = expected[name]
        value = tensor
        if adapt is not None:
            value = adapt(name, value, tuple(target.shape))
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"weight {name!r} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}"
            )
        value = value.to(device=device, dtype=dtype if value.is_floating_point() and dtype else None)
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[leaf] = value
        seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        shown = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ValueError(f"{len(missing)} weights missing for {type(module).__name__}: {shown}")
