"""The Flux.1 rectified-flow transformer (Black Forest Labs' "flux1-dev" / "flux1-schnell" layout).

Parameter names equal the keys of the single-file checkpoints (``flux1-dev.safetensors``; ComfyUI's
all-in-one files add the prefix ``model.diffusion_model.``), so a state dict loads with
``load_state_dict(strict=True)`` and no remapping:

* ``img_in``: linear from the patchified latent (16 channels x 2x2 patch = 64) to ``hidden_size``;
  ``txt_in``: linear from the T5 context (4096) to ``hidden_size``.
* ``time_in`` / ``guidance_in`` / ``vector_in``: :class:`MLPEmbedder` (``in_layer``, SiLU, ``out_layer``).
  The timestep and the distilled guidance scale are multiplied by 1000 and embedded with the 256-dim
  sinusoidal embedding (cos first); ``vector_in`` takes the pooled CLIP-L vector (768). Their sum is
  the modulation vector ``vec``. ``guidance_in`` exists only in guidance-distilled models (dev).
* ``double_blocks.N``: :class:`DoubleStreamBlock`, separate weights for the image and text streams
  (``img_mod.lin`` / ``txt_mod.lin`` 6-way modulation, ``img_attn`` / ``txt_attn`` with ``qkv``,
  ``norm.query_norm.scale`` / ``norm.key_norm.scale`` RMSNorm over each head and ``proj``,
  ``img_mlp.0`` / ``img_mlp.2`` GELU(tanh) MLP) and one joint attention over text then image tokens.
* ``single_blocks.N``: :class:`SingleStreamBlock` over the concatenated sequence: ``modulation.lin``
  (3-way), ``linear1`` (q, k, v and the MLP input in one matrix), ``norm`` (q/k RMSNorm) and
  ``linear2`` (over the attention output concatenated with the activated MLP).
* ``final_layer``: ``adaLN_modulation.1`` (shift, then scale, from SiLU(vec)) and ``linear`` back to
  the patch channels.

Positions are rotary embeddings (RoPE) over three axes of the token ids: ``axes_dim = (16, 56, 56)``
frequencies split of each 128-wide head, ``theta = 10000``, consecutive pairs of channels rotated.
Image ids are ``(0, row, col)`` of each 2x2 patch and text ids are zeros (ComfyUI's convention, as in
the reference and diffusers' pipeline). Real Flux.1: hidden 3072, 24 heads of 128, 19 double and 38
single blocks, MLP ratio 4, qkv bias. The model facts come from the published key layout and the
reference architecture description; this file was written from them, no code was copied.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.unet import timestep_embedding

__all__ = [
    "FLUX_DEV",
    "FLUX_SCHNELL",
    "DoubleStreamBlock",
    "Flux",
    "FluxConfig",
    "SingleStreamBlock",
    "apply_rope",
    "flux_config_from_state_dict",
    "image_ids",
    "patchify",
    "rope_frequencies",
    "unpatchify",
]

logger = logging.getLogger(__name__)

PATCH = 2  # every Flux.1 model patchifies the latent 2x2
TIME_FACTOR = 1000.0  # timesteps (sigma in 0..1) and guidance are scaled by this before embedding
EMBED_DIM = 256  # width of the sinusoidal timestep / guidance embedding
REAL_AXES_DIM = (16, 56, 56)  # RoPE split of a 128-wide head (Flux.1 dev / schnell)


@dataclass(frozen=True)
class FluxConfig:
    """Hyperparameters of a Flux.1 transformer; the defaults are flux1-dev's."""

    in_channels: int = 64  # patchified input channels (latent channels * 4)
    out_channels: int = 64  # patchified output channels (Fill / Depth models take more in than out)
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = REAL_AXES_DIM
    theta: float = 10000.0
    context_in_dim: int = 4096
    vec_in_dim: int = 768
    mlp_ratio: float = 4.0
    guidance_embed: bool = True
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim or any(d % 2 for d in self.axes_dim):
            raise ValueError(f"axes_dim {self.axes_dim} must be even sizes summing to the head width {self.head_dim}")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % (PATCH * PATCH):
                raise ValueError(f"{name} {getattr(self, name)} is not a multiple of the 2x2 patch (4)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return round(self.hidden_size * self.mlp_ratio)


FLUX_DEV = FluxConfig()
FLUX_SCHNELL = FluxConfig(guidance_embed=False)


# --- positions ---------------------------------------------------------------------------------


def rope_frequencies(ids: Tensor, axes_dim: Sequence[int], theta: float) -> tuple[Tensor, Tensor]:
    """Cosines and sines of the rotary embedding for position ``ids`` ``[B, N, len(axes_dim)]``.

    Axis ``i`` contributes ``axes_dim[i] // 2`` frequencies ``theta ** (-2j / axes_dim[i])``; the axes
    are concatenated in order. Computed in float64 (as the reference does), returned as float32
    ``[B, 1, N, head_dim // 2]`` (the 1 broadcasts over heads).
    """
    angles = []
    for axis, dim in enumerate(axes_dim):
        exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim
        omega = 1.0 / theta**exponents
        angles.append(ids[..., axis].to(torch.float64)[..., None] * omega)
    angle = torch.cat(angles, dim=-1)[:, None]
    return angle.cos().float(), angle.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each consecutive channel pair ``(x[2j], x[2j+1])`` of ``x`` ``[B, H, N, D]`` by its angle."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((cos * even - sin * odd, sin * even + cos * odd), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def image_ids(batch: int, rows: int, cols: int, device: torch.device | None = None) -> Tensor:
    """Position ids ``(0, row, col)`` of a ``rows x cols`` grid of patches, row-major: ``[B, rows*cols, 3]``."""
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return ids.reshape(1, rows * cols, 3).expand(batch, -1, -1)


def patchify(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` (H, W even) -> ``[B, (H/2)*(W/2), C*4]`` tokens, channels ordered (c, dy, dx)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpatchify(tokens: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, rows*cols, C*4]`` -> ``[B, C, rows*2, cols*2]``."""
    b, _, width = tokens.shape
    c = width // (PATCH * PATCH)
    x = tokens.reshape(b, rows, cols, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, rows * PATCH, cols * PATCH)


def joint_attention(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on q and k (``[B, H, N, D]``), scaled dot-product attention, heads merged: ``[B, N, H*D]``."""
    out = F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
    return out.transpose(1, 2).flatten(2)


def split_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, N, 3*H*D]`` laid out (q|k|v, head, channel) -> q, k, v each ``[B, H, N, D]``."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


# --- layers ------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm (eps 1e-6) computed in float32, then multiplied by ``scale``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return normed.to(x.dtype) * self.scale.to(x.dtype)


class QKNorm(nn.Module):
    """Per-head RMSNorm of queries and keys (``query_norm.scale`` / ``key_norm.scale``, head width)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q), self.key_norm(k)


class MLPEmbedder(nn.Module):
    """``out_layer(silu(in_layer(x)))``: the time / guidance / pooled-vector embedders."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class Modulation(nn.Module):
    """``lin(silu(vec))`` split into ``parts`` chunks of ``[B, 1, dim]``: (shift, scale, gate) per group."""

    def __init__(self, dim: int, parts: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, parts * dim)
        self.parts = parts

    def forward(self, vec: Tensor) -> tuple[Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.parts, dim=-1)


class SelfAttention(nn.Module):
    """One stream's attention weights: ``qkv`` (bias optional), ``norm`` (QKNorm) and output ``proj``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised q, k and v ``[B, H, N, D]`` of the modulated tokens ``x``."""
        q, k, v = split_heads(self.qkv(x), self.heads)
        q, k = self.norm(q, k)
        return q.to(v.dtype), k.to(v.dtype), v


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``(1 + scale) * LayerNorm(x) + shift`` (LayerNorm without affine, eps 1e-6)."""
    return (1 + scale) * F.layer_norm(x, x.shape[-1:], eps=1e-6) + shift


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    """``0``: linear up, ``1``: GELU (tanh approximation), ``2``: linear down."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, attending jointly (text tokens first)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, qkv_bias: bool) -> None:
        super().__init__()
        self.img_mod = Modulation(dim, 6)
        self.img_attn = SelfAttention(dim, heads, qkv_bias)
        self.img_mlp = _mlp(dim, mlp_hidden)
        self.txt_mod = Modulation(dim, 6)
        self.txt_attn = SelfAttention(dim, heads, qkv_bias)
        self.txt_mlp = _mlp(dim, mlp_hidden)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        img_mod = self.img_mod(vec)
        txt_mod = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.project(_modulate(img, img_mod[0], img_mod[1]))
        txt_q, txt_k, txt_v = self.txt_attn.project(_modulate(txt, txt_mod[0], txt_mod[1]))
        attn = joint_attention(
            torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), torch.cat((txt_v, img_v), dim=2),
            *rope,
        )
        txt_out, img_out = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        img = self._finish(img, img_out, img_mod, self.img_attn, self.img_mlp)
        txt = self._finish(txt, txt_out, txt_mod, self.txt_attn, self.txt_mlp)
        return img, txt

    @staticmethod
    def _finish(x: Tensor, attn: Tensor, mod: tuple[Tensor, ...], weights: SelfAttention, mlp: nn.Module) -> Tensor:
        """Gated attention residual, then the gated MLP residual of one stream."""
        _, _, gate1, shift2, scale2, gate2 = mod
        x = x + gate1 * weights.proj(attn)
        return x + gate2 * mlp(_modulate(x, shift2, scale2))


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP over the joint sequence, one set of weights (``linear1`` / ``linear2``)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.split = [3 * dim, mlp_hidden]
        self.linear1 = nn.Linear(dim, 3 * dim + mlp_hidden)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)
        self.norm = QKNorm(dim // heads)
        self.modulation = Modulation(dim, 3)

    def forward(self, x: Tensor, vec: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1(_modulate(x, shift, scale)).split(self.split, dim=-1)
        q, k, v = split_heads(qkv, self.heads)
        q, k = self.norm(q, k)
        attn = joint_attention(q.to(v.dtype), k.to(v.dtype), v, *rope)
        out = self.linear2(torch.cat((attn, F.gelu(mlp, approximate="tanh")), dim=-1))
        return x + gate * out


class LastLayer(nn.Module):
    """``adaLN_modulation.1`` (shift, scale) on the normed tokens, then ``linear`` to the patch channels."""

    def __init__(self, dim: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(_modulate(x, shift, scale))


# --- the model ---------------------------------------------------------------------------------


class Flux(nn.Module):
    """The Flux.1 transformer; see the module docstring for the layout."""

    def __init__(self, config: FluxConfig = FLUX_DEV) -> None:
        super().__init__()
        c = config
        self.config = c
        self.img_in = nn.Linear(c.in_channels, c.hidden_size)
        self.time_in = MLPEmbedder(EMBED_DIM, c.hidden_size)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size)
        self.guidance_in = MLPEmbedder(EMBED_DIM, c.hidden_size) if c.guidance_embed else None
        self.txt_in = nn.Linear(c.context_in_dim, c.hidden_size)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_hidden, c.qkv_bias) for _ in range(c.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_hidden) for _ in range(c.depth_single_blocks)
        )
        self.final_layer = LastLayer(c.hidden_size, c.out_channels)

    def forward(
        self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None, guidance: Tensor | None = None,
        skip_double: Collection[int] = (), skip_single: Collection[int] = (),
        control: Mapping[str, Sequence[Tensor | None]] | None = None,
    ) -> Tensor:
        """Predict the flow velocity for latent ``x`` ``[B, C, H, W]`` (C = in_channels / 4).

        ``timesteps`` ``[B]`` is sigma in 0..1, ``context`` ``[B, L, context_in_dim]`` the T5 tokens, ``y``
        ``[B, vec_in_dim]`` the pooled CLIP vector (zeros when None), ``guidance`` ``[B]`` the distilled
        guidance scale (ignored by models without ``guidance_in``; skipped when None, as ComfyUI does).
        An odd H or W is padded circularly to the patch grid and cropped off the result. ``skip_double`` /
        ``skip_single`` leave those blocks out (skip-layer guidance). ``control``: ControlNet residuals, see
        :meth:`forward_tokens`.
        """
        b, _, h, w = x.shape
        padded = F.pad(x, (0, (-w) % PATCH, 0, (-h) % PATCH), mode="circular")
        rows, cols = padded.shape[2] // PATCH, padded.shape[3] // PATCH
        img_ids = image_ids(b, rows, cols, device=x.device)
        txt_ids = torch.zeros(b, context.shape[1], 3, device=x.device)
        tokens = self.forward_tokens(patchify(padded), img_ids, context, txt_ids, timesteps, y, guidance,
                                     skip_double=skip_double, skip_single=skip_single, control=control)
        return unpatchify(tokens, rows, cols)[:, :, :h, :w]

    def forward_tokens(
        self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor, timesteps: Tensor,
        y: Tensor | None = None, guidance: Tensor | None = None,
        skip_double: Collection[int] = (), skip_single: Collection[int] = (),
        control: Mapping[str, Sequence[Tensor | None]] | None = None,
    ) -> Tensor:
        """The transformer on packed tokens: ``img`` ``[B, N, in_channels]`` -> ``[B, N, out_channels]``.

        ``img_ids`` ``[B, N, 3]`` and ``txt_ids`` ``[B, L, 3]`` are the RoPE positions. ControlNet residuals
        ``[B, N, hidden]`` (engine/backend/flux_controlnet.py) are added to the image tokens: ``control["double"][i]``
        after double block ``i``, ``control["single"][i]`` after single block ``i`` (also where a block is skipped).
        """
        vec = self.embed_vector(timesteps, y, guidance, img.dtype)
        rope = rope_frequencies(torch.cat((txt_ids, img_ids), dim=1), self.config.axes_dim, self.config.theta)
        img = self.img_in(img)
        txt = self.txt_in(txt)
        doubles, singles = (control.get("double", ()), control.get("single", ())) if control is not None else ((), ())
        for index, double in enumerate(self.double_blocks):
            if index not in skip_double:
                img, txt = double(img, txt, vec, rope)
            if (residual := _residual(doubles, index)) is not None:
                img = img + residual.to(img.dtype)
        joint = torch.cat((txt, img), dim=1)
        for index, single in enumerate(self.single_blocks):
            if index not in skip_single:
                joint = single(joint, vec, rope)
            if (residual := _residual(singles, index)) is not None:
                joint = torch.cat((joint[:, :txt.shape[1]], joint[:, txt.shape[1]:] + residual.to(joint.dtype)), dim=1)
        return self.final_layer(joint[:, txt.shape[1]:], vec)

    def embed_vector(self, timesteps: Tensor, y: Tensor | None, guidance: Tensor | None, dtype: torch.dtype) -> Tensor:
        """The modulation vector: time_in(t) + guidance_in(g) (if present) + vector_in(y), ``[B, hidden]``."""
        vec = self.time_in(_embed_scalar(timesteps, dtype))
        if self.guidance_in is not None and guidance is not None:
            vec = vec + self.guidance_in(_embed_scalar(guidance, dtype))
        if y is None:
            y = torch.zeros(vec.shape[0], self.config.vec_in_dim, device=vec.device, dtype=dtype)
        return vec + self.vector_in(y[:, : self.config.vec_in_dim].to(dtype))


def _residual(residuals: Sequence[Tensor | None], index: int) -> Tensor | None:
    return residuals[index] if index < len(residuals) else None


def _embed_scalar(values: Tensor, dtype: torch.dtype) -> Tensor:
    """256-dim sinusoidal embedding of ``values * 1000`` (the reference's time factor)."""
    return timestep_embedding(values.float() * TIME_FACTOR, EMBED_DIM).to(dtype)


# --- configuration from a checkpoint -----------------------------------------------------------


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _block_count(names: Sequence[str], prefix: str, group: str) -> int:
    """Number of ``{prefix}{group}.N.`` blocks; ValueError unless they are numbered 0..n-1."""
    pattern = re.compile(re.escape(f"{prefix}{group}.") + r"(\d+)\.")
    indices = {int(m.group(1)) for name in names if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise ValueError(f"{prefix}{group} blocks are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _require(shapes: Mapping[str, Any], prefix: str, name: str) -> tuple[int, ...]:
    if f"{prefix}{name}" not in shapes:
        raise ValueError(f"not a Flux transformer state dict: no {prefix}{name!s}")
    return _shape(shapes[f"{prefix}{name}"])


def flux_config_from_state_dict(
    sd: Mapping[str, Any], prefix: str = "", *, axes_dim: Sequence[int] | None = None, theta: float = 10000.0
) -> FluxConfig:
    """Infer a :class:`FluxConfig` from checkpoint names and shapes (tensors, shapes or tuples).

    Reads: ``img_in.weight`` (hidden, in channels), ``final_layer.linear.weight`` (out channels),
    ``txt_in.weight`` (context width), ``vector_in.in_layer.weight`` (pooled width), the q-norm scale
    (head width, so heads = hidden / head width), the block counts, ``img_mlp.0`` or ``linear1`` (MLP
    ratio), ``img_attn.qkv.bias`` (qkv bias) and ``guidance_in`` (guidance-distilled). The RoPE split is
    not stored: a 128-wide head gets Flux.1's (16, 56, 56); other widths need ``axes_dim``.
    Raises ValueError for a state dict that is not a Flux.1 transformer.
    """
    names = [k for k in sd if k.startswith(prefix)]
    hidden, in_channels = _require(sd, prefix, "img_in.weight")
    out_channels = _require(sd, prefix, "final_layer.linear.weight")[0]
    context_in_dim = _require(sd, prefix, "txt_in.weight")[1]
    vec_in_dim = _require(sd, prefix, "vector_in.in_layer.weight")[1]
    depth = _block_count(names, prefix, "double_blocks")
    single = _block_count(names, prefix, "single_blocks")
    if depth:
        head_dim = _require(sd, prefix, "double_blocks.0.img_attn.norm.query_norm.scale")[0]
        mlp_hidden = _require(sd, prefix, "double_blocks.0.img_mlp.0.weight")[0]
    elif single:
        head_dim = _require(sd, prefix, "single_blocks.0.norm.query_norm.scale")[0]
        mlp_hidden = _require(sd, prefix, "single_blocks.0.linear1.weight")[0] - 3 * hidden
    else:
        raise ValueError(f"not a Flux transformer state dict: no {prefix}double_blocks / single_blocks")
    if hidden % head_dim:
        raise ValueError(f"hidden size {hidden} is not a multiple of the head width {head_dim}")
    if axes_dim is None:
        if head_dim != sum(REAL_AXES_DIM):
            raise ValueError(f"head width {head_dim} is not Flux.1's 128: pass axes_dim (summing to {head_dim})")
        axes_dim = REAL_AXES_DIM
    config = FluxConfig(
        in_channels=in_channels, out_channels=out_channels, hidden_size=hidden, num_heads=hidden // head_dim,
        depth=depth, depth_single_blocks=single, axes_dim=tuple(axes_dim), theta=theta,
        context_in_dim=context_in_dim, vec_in_dim=vec_in_dim, mlp_ratio=mlp_hidden / hidden,
        guidance_embed=f"{prefix}guidance_in.in_layer.weight" in sd,
        qkv_bias=depth == 0 or f"{prefix}double_blocks.0.img_attn.qkv.bias" in sd,
    )
    logger.debug("Flux config from %d tensors: %s", len(names), config)
    return config
