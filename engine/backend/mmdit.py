"""The multimodal diffusion transformer (MMDiT) of Stable Diffusion 3 and 3.5.

Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis": the
latent is cut into ``patch_size`` x ``patch_size`` patches (a strided conv), a learned/fixed 2-D
position table of ``pos_embed_max_size`` squared entries is centre-cropped to the patch grid and
added, and ``depth`` joint blocks run two token streams (text context and image) side by side, each
with its own weights, meeting only in one attention over the concatenated ``[context, image]`` tokens.
Every stream block is adaLN-Zero modulated (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers") by ``c = t_embedder(timestep) + y_embedder(pooled text)``: a LayerNorm without affine
(eps 1e-6), ``x * (1 + scale) + shift``, and gated residuals. The last block's context stream is
"pre-only": it feeds keys and values to the joint attention and stops (no output projection, no MLP,
modulation of shift and scale only). SD3.5 adds RMSNorm (eps 1e-6, per head) on queries and keys
(``ln_q`` / ``ln_k``), and SD3.5 medium (MMDiT-X) gives some image blocks a second, image-only
self-attention ``x_block.attn2`` with its own shift/scale/gate (nine modulation chunks in all).

Parameter names equal the single-file checkpoint keys with ``model.diffusion_model.`` removed, so a
checkpoint loads with ``strict=True`` and no remapping::

    x_embedder.proj            patch conv [hidden, in_channels, p, p]
    pos_embed                  [1, pos_embed_max_size ** 2, hidden]
    t_embedder.mlp.0/2         256-dim sinusoidal timestep embedding -> hidden
    y_embedder.mlp.0/2         pooled text vector (2048) -> hidden
    context_embedder           text tokens (4096) -> hidden
    joint_blocks.N.{context_block,x_block}.adaLN_modulation.1
    joint_blocks.N.{context_block,x_block}.attn.qkv / .attn.proj / .attn.ln_q / .attn.ln_k
    joint_blocks.N.{context_block,x_block}.mlp.fc1 / .mlp.fc2
    joint_blocks.N.x_block.attn2.qkv / .proj / .ln_q / .ln_k        (dual-attention blocks)
    final_layer.adaLN_modulation.1 / final_layer.linear

Modulation chunk orders (the order of the rows of ``adaLN_modulation.1``): a full block is shift,
scale, gate (attention), shift, scale, gate (MLP), then shift, scale, gate of ``attn2`` where
present; a pre-only block and the final layer are shift, scale. The timestep is SD3's
``sigma * 1000``. Facts used (names, shapes, chunk orders, the crop, the circular padding of a latent
whose size is not a multiple of the patch size) were looked up in public descriptions of the
architecture and its checkpoints; the code is written here and checked against diffusers'
independent ``SD3Transformer2DModel`` in tests/backend/test_mmdit.py.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.attention import attention
from engine.backend.unet import timestep_embedding

__all__ = [
    "SD3_MEDIUM",
    "SD35_LARGE",
    "SD35_MEDIUM",
    "MMDiT",
    "MMDiTConfig",
    "mmdit_config_from_state_dict",
]

NORM_EPS = 1e-6
TIMESTEP_FREQUENCIES = 256


@dataclass(frozen=True)
class MMDiTConfig:
    """Shape of an MMDiT. SD3 names its models by ``depth``: hidden = 64 * depth, heads = depth."""

    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    depth: int = 24  # number of joint blocks
    hidden_size: int = 1536
    num_heads: int = 24
    context_in_dim: int = 4096  # T5-XXL width (CLIP-L/G features are zero-padded to it)
    pooled_dim: int = 2048  # CLIP-L (768) + CLIP-G (1280) pooled outputs ("adm_in_channels")
    pos_embed_max_size: int = 192
    qk_norm: str | None = None  # "rms_norm" (SD3.5) or None (SD3)
    x_block_self_attn_layers: tuple[int, ...] = ()  # SD3.5 medium: 0..12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.qk_norm not in (None, "rms_norm"):
            raise ValueError(f"qk_norm must be 'rms_norm' or None, not {self.qk_norm!r}")


SD3_MEDIUM = MMDiTConfig()
SD35_LARGE = MMDiTConfig(depth=38, hidden_size=2432, num_heads=38, qk_norm="rms_norm")
SD35_MEDIUM = MMDiTConfig(
    pos_embed_max_size=384, qk_norm="rms_norm", x_block_self_attn_layers=tuple(range(13))
)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``[B, C]`` shift and scale over ``[B, N, C]``."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _layer_norm(x: Tensor) -> Tensor:
    """LayerNorm without affine parameters (eps 1e-6), the norm before every modulation."""
    return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p`` x ``p`` patches of a ``[B, C, H, W]`` latent -> ``[B, (H/p)(W/p), hidden]``."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class EmbedderMLP(nn.Module):
    """``mlp.0`` -> SiLU -> ``mlp.2``: the timestep (from 256 frequencies) and pooled-text embedders."""

    def __init__(self, in_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class SelfAttention(nn.Module):
    """Fused ``qkv`` projection, optional per-head RMSNorm of q and k, and ``proj`` (absent if pre-only).

    The attention itself runs outside (jointly over both streams, or image-only for ``attn2``).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: str | None, pre_only: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        head_dim = dim // num_heads
        self.ln_q = nn.RMSNorm(head_dim, eps=NORM_EPS) if qk_norm else None
        self.ln_k = nn.RMSNorm(head_dim, eps=NORM_EPS) if qk_norm else None
        self.proj = None if pre_only else nn.Linear(dim, dim)

    def pre_attention(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values ``[B, N, heads * head_dim]`` (q and k normed per head)."""
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads).unbind(2)
        if self.ln_q is not None and self.ln_k is not None:
            q, k = self.ln_q(q), self.ln_k(k)
        return q.reshape(batch, tokens, dim), k.reshape(batch, tokens, dim), v.reshape(batch, tokens, dim)

    def post_attention(self, x: Tensor) -> Tensor:
        if self.proj is None:
            raise RuntimeError("a pre-only attention has no output projection")
        return self.proj(x)

    def forward(self, x: Tensor) -> Tensor:
        """Plain self-attention over ``x`` (the dual-attention ``attn2`` of SD3.5 medium)."""
        return self.post_attention(attention(*self.pre_attention(x), self.num_heads))


class Mlp(nn.Module):
    """``fc1`` -> GELU (tanh approximation) -> ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


@dataclass
class _Pending:
    """What a stream block keeps between its attention inputs and the joint attention's output."""

    gate_msa: Tensor
    shift_mlp: Tensor
    scale_mlp: Tensor
    gate_mlp: Tensor
    attn2_out: Tensor | None  # gated attn2 output (dual-attention blocks)


class StreamBlock(nn.Module):
    """One stream (context or image) of a joint block ("DismantledBlock" in the SD3 reference).

    ``pre_only``: modulation is shift and scale only and the block ends after giving q, k, v.
    ``self_attn``: an extra image-only attention ``attn2`` on its own modulation of the same norm.
    """

    def __init__(self, config: MMDiTConfig, pre_only: bool = False, self_attn: bool = False) -> None:
        super().__init__()
        dim = config.hidden_size
        self.pre_only = pre_only
        self.attn = SelfAttention(dim, config.num_heads, config.qk_norm, pre_only=pre_only)
        self.attn2 = SelfAttention(dim, config.num_heads, config.qk_norm) if self_attn else None
        self.mlp = None if pre_only else Mlp(dim, int(dim * config.mlp_ratio))
        self.chunks = 2 if pre_only else 9 if self_attn else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.chunks * dim))

    def pre_attention(self, x: Tensor, c: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], _Pending | None]:
        """q, k, v of the modulated stream, and what :meth:`post_attention` needs (None if pre-only)."""
        mods = self.adaLN_modulation(c).chunk(self.chunks, dim=1)
        normed = _layer_norm(x)
        qkv = self.attn.pre_attention(modulate(normed, mods[0], mods[1]))
        if self.pre_only:
            return qkv, None
        attn2_out = None
        if self.attn2 is not None:
            attn2_out = mods[8][:, None] * self.attn2(modulate(normed, mods[6], mods[7]))
        return qkv, _Pending(mods[2], mods[3], mods[4], mods[5], attn2_out)

    def post_attention(self, attn_out: Tensor, x: Tensor, pending: _Pending) -> Tensor:
        """Gated attention residual (and ``attn2``'s), then the modulated, gated MLP residual."""
        if self.mlp is None:
            raise RuntimeError("a pre-only block has no post-attention part")
        x = x + pending.gate_msa[:, None] * self.attn.post_attention(attn_out)
        if pending.attn2_out is not None:
            x = x + pending.attn2_out
        mlp_in = modulate(_layer_norm(x), pending.shift_mlp, pending.scale_mlp)
        return x + pending.gate_mlp[:, None] * self.mlp(mlp_in)


class JointBlock(nn.Module):
    """``context_block`` and ``x_block`` meeting in one attention over ``[context, image]`` tokens."""

    def __init__(self, config: MMDiTConfig, index: int, *, context_pre_only: bool | None = None) -> None:
        """``context_pre_only``: whether the context stream stops after giving keys and values (default: in the
        model's last block; SD3 ControlNets have none)."""
        super().__init__()
        last = index == config.depth - 1 if context_pre_only is None else context_pre_only
        self.context_block = StreamBlock(config, pre_only=last)
        self.x_block = StreamBlock(config, self_attn=index in config.x_block_self_attn_layers)
        self.num_heads = config.num_heads

    def forward(self, context: Tensor, x: Tensor, c: Tensor) -> tuple[Tensor | None, Tensor]:
        """Returns the updated ``(context, x)``; context is None after a pre-only context block."""
        (cq, ck, cv), context_pending = self.context_block.pre_attention(context, c)
        (xq, xk, xv), x_pending = self.x_block.pre_attention(x, c)
        joint = attention(
            torch.cat([cq, xq], dim=1), torch.cat([ck, xk], dim=1), torch.cat([cv, xv], dim=1), self.num_heads
        )
        context_out, x_out = joint.split([context.shape[1], x.shape[1]], dim=1)
        if x_pending is None:
            raise RuntimeError("the image stream of a joint block is never pre-only")
        x = self.x_block.post_attention(x_out, x, x_pending)
        if context_pending is None:
            return None, x
        return self.context_block.post_attention(context_out, context, context_pending), x


class FinalLayer(nn.Module):
    """Modulated LayerNorm (shift, scale) and a linear map to ``p * p * out_channels`` per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(_layer_norm(x), shift, scale))


class MMDiT(nn.Module):
    """SD3 / SD3.5 MMDiT: ``forward(x, timesteps, context, y)`` predicts the flow velocity.

    ``pos_embed`` is a persistent buffer filled from the checkpoint (SD3 stores its fixed sin-cos
    table there); a freshly built model holds zeros until weights are loaded.
    """

    pos_embed: Tensor

    def __init__(self, config: MMDiTConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, hidden)
        self.register_buffer("pos_embed", torch.zeros(1, config.pos_embed_max_size**2, hidden))
        self.t_embedder = EmbedderMLP(TIMESTEP_FREQUENCIES, hidden)
        self.y_embedder = EmbedderMLP(config.pooled_dim, hidden)
        self.context_embedder = nn.Linear(config.context_in_dim, hidden)
        self.joint_blocks = nn.ModuleList(JointBlock(config, i) for i in range(config.depth))
        self.final_layer = FinalLayer(hidden, config.patch_size, config.out_channels)

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], prefix: str = "", config: MMDiTConfig | None = None
    ) -> MMDiT:
        """Build on the meta device and adopt ``state_dict``'s tensors (keys under ``prefix``; no copy)."""
        config = config or mmdit_config_from_state_dict(state_dict, prefix)
        weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(weights, strict=True, assign=True)
        return model.requires_grad_(False).eval()

    def cropped_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """The centre ``grid_h`` x ``grid_w`` window of the position table, ``[1, grid_h * grid_w, hidden]``."""
        size = self.config.pos_embed_max_size
        if grid_h > size or grid_w > size:
            raise ValueError(
                f"latent of {grid_h}x{grid_w} patches exceeds the model's {size}x{size} position table"
                f" (at most {size * self.config.patch_size} latent pixels per side)"
            )
        top, left = (size - grid_h) // 2, (size - grid_w) // 2
        table = self.pos_embed.view(1, size, size, -1)[:, top : top + grid_h, left : left + grid_w]
        return table.reshape(1, grid_h * grid_w, -1)

    def embed(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Patch tokens (plus positions), embedded context tokens and the conditioning vector ``c``."""
        p = self.config.patch_size
        tokens = self.x_embedder(x) + self.cropped_pos_embed(x.shape[-2] // p, x.shape[-1] // p).to(x.dtype)
        frequencies = timestep_embedding(timesteps, TIMESTEP_FREQUENCIES).to(x.dtype)
        c = self.t_embedder(frequencies) + self.y_embedder(y)
        return tokens, self.context_embedder(context), c

    def unpatchify(self, tokens: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """``[B, h * w, p * p * C]`` -> ``[B, C, h * p, w * p]`` (each token's vector is ``(p, p, C)``)."""
        p, channels = self.config.patch_size, self.config.out_channels
        patches = tokens.view(tokens.shape[0], grid_h, grid_w, p, p, channels)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], channels, grid_h * p, grid_w * p)

    def forward(
        self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor, skip_layers: Collection[int] = (),
        control: Mapping[str, Sequence[Tensor | None]] | None = None,
    ) -> Tensor:
        """Velocity for latent ``x`` ``[B, C, H, W]`` at ``timesteps`` ``[B]`` (sigma * 1000), text tokens
        ``context`` ``[B, L, context_in_dim]`` and pooled text ``y`` ``[B, pooled_dim]``.

        A latent whose sides are not multiples of the patch size is padded circularly and the output
        cropped back. ``skip_layers`` leaves those joint blocks out (skip-layer guidance). ``control["double"][i]``
        (ControlNet residuals ``[B, tokens, hidden]``, engine/backend/mmdit_controlnet.py) is added to the image
        tokens after joint block ``i`` (also where that block is skipped). Inputs are cast to the weights' dtype and
        the output stays in it.
        """
        height, width = x.shape[-2:]
        dtype = self.x_embedder.proj.weight.dtype
        x = _pad_to_patches(x.to(dtype), self.config.patch_size)
        tokens, context, c = self.embed(x, timesteps, context.to(dtype), y.to(dtype))
        stream: Tensor | None = context
        residuals = control.get("double", ()) if control is not None else ()
        for index, block in enumerate(self.joint_blocks):
            if index not in skip_layers:
                if stream is None:
                    raise ValueError(f"joint block {index} follows a pre-only block: skip only earlier blocks")
                stream, tokens = block(stream, tokens, c)
            if index < len(residuals) and (residual := residuals[index]) is not None:
                tokens = tokens + residual.to(tokens.dtype)
        tokens = self.final_layer(tokens, c)
        p = self.config.patch_size
        out = self.unpatchify(tokens, x.shape[-2] // p, x.shape[-1] // p)
        return out[..., :height, :width]


def _pad_to_patches(x: Tensor, patch_size: int) -> Tensor:
    """Circular padding of the bottom/right edges up to a multiple of ``patch_size`` (no-op if one already)."""
    pad_h, pad_w = (-x.shape[-2]) % patch_size, (-x.shape[-1]) % patch_size
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
    return x


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def mmdit_config_from_state_dict(
    shapes: Mapping[str, Any], prefix: str = "model.diffusion_model.", *, head_dim: int = 64
) -> MMDiTConfig:
    """Infer an :class:`MMDiTConfig` from key names and shapes (tensors or shape tuples; no data read).

    The head count is only visible with qk norm (``ln_q`` is one head wide); without it SD3's
    64-channel heads are assumed (``head_dim`` overrides, e.g. for tiny test models).
    """
    s = {k[len(prefix):]: _shape(v) for k, v in shapes.items() if k.startswith(prefix)}
    required = ("x_embedder.proj.weight", "pos_embed", "context_embedder.weight", "y_embedder.mlp.0.weight",
                "final_layer.linear.weight", "joint_blocks.0.x_block.attn.qkv.weight")
    missing = [prefix + key for key in required if key not in s]
    if missing:
        raise ValueError(f"not an SD3/SD3.5 MMDiT state dict: missing {', '.join(missing)}")
    hidden, in_channels, patch_size, _ = s["x_embedder.proj.weight"]
    depth = _count_joint_blocks(s, prefix)
    positions = s["pos_embed"][1]
    max_size = math.isqrt(positions)
    if max_size * max_size != positions:
        raise ValueError(f"{prefix}pos_embed has {positions} positions, not a square grid")
    ln_q = s.get("joint_blocks.0.x_block.attn.ln_q.weight")
    return MMDiTConfig(
        patch_size=patch_size,
        in_channels=in_channels,
        out_channels=s["final_layer.linear.weight"][0] // (patch_size * patch_size),
        depth=depth,
        hidden_size=hidden,
        num_heads=hidden // (ln_q[0] if ln_q else head_dim),
        context_in_dim=s["context_embedder.weight"][1],
        pooled_dim=s["y_embedder.mlp.0.weight"][1],
        pos_embed_max_size=max_size,
        qk_norm="rms_norm" if ln_q else None,
        x_block_self_attn_layers=tuple(
            i for i in range(depth) if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in s
        ),
    )


def _count_joint_blocks(s: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    """Number of joint blocks, checking that they are numbered 0..N-1 without gaps."""
    indices = {int(key.split(".")[1]) for key in s if key.startswith("joint_blocks.")}
    depth = max(indices) + 1
    gaps = sorted(set(range(depth)) - indices)
    if gaps:
        raise ValueError(f"{prefix}joint_blocks has no block(s) {gaps} of 0..{depth - 1}")
    return depth
