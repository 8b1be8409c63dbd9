"""SD3 / SD3.5 ControlNets (InstantX's and others' in diffusers' ``SD3ControlNetModel`` layout).

A shortened copy of the MMDiT (engine/backend/mmdit.py): the same patch embedding, position table, timestep,
pooled-text and context embedders and ``N`` joint blocks, none of them pre-only (every context stream runs to the
end), and no final layer. The hint is a VAE latent of the control image (``hint_format``: SD3's scale factor
without its shift, as ComfyUI feeds these nets), patch-embedded by ``pos_embed_input`` (a strided conv without
positions) and added to the image tokens before the first block. After block ``i`` the image tokens go through
``controlnet_blocks.i`` (a Linear): one residual per ControlNet block.

The main model receives them after its joint blocks (ComfyUI's spacing): with ``depth`` joint blocks in the model
and ``N`` here, each residual feeds ``depth // N`` consecutive blocks, the last one block fewer, so the model's last
block gets none. For depths that are multiples of ``N`` (every released net) this equals diffusers'
``SD3Transformer2DModel`` spacing. The pooled text vector is replaced by zeros (diffusers'
``force_zeros_for_pooled_projection``, ComfyUI's behaviour for these nets).

Parameter names are the MMDiT's single-file names (``x_embedder.proj``, ``pos_embed``, ``t_embedder.mlp.0``,
``joint_blocks.N.x_block.attn.qkv``, ...) plus ``controlnet_blocks.N`` and ``pos_embed_input.proj``; the loader
(engine/models/flow_controlnet_load.py) renames diffusers' keys to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.latent_formats import LatentFormat
from engine.backend.mmdit import TIMESTEP_FREQUENCIES, EmbedderMLP, JointBlock, MMDiTConfig, PatchEmbed
from engine.backend.unet import timestep_embedding

__all__ = ["SD3_HINT_FORMAT", "SD3ControlNet", "SD3ControlNetConfig", "spread_residuals"]

#: The hint latent's scaling: SD3's scale factor without its shift (ComfyUI's "SD3 controlnet" format).
SD3_HINT_FORMAT = LatentFormat(scale=1.5305)


@dataclass(frozen=True)
class SD3ControlNetConfig:
    """``mmdit``: the shape of the copied MMDiT (``depth`` = this net's joint blocks); ``hint_channels``: input
    channels of ``pos_embed_input`` (the latent's, plus 1 for an inpainting net's mask)."""

    mmdit: MMDiTConfig
    hint_channels: int = 16

    def describe(self) -> str:
        m = self.mmdit
        kind = "SD3.5" if m.qk_norm else "SD3"
        return f"an {kind} ControlNet ({m.depth} blocks, hidden {m.hidden_size}, {self.hint_channels}-channel hint)"


def spread_residuals(outputs: list[Tensor], depth: int) -> list[Tensor | None]:
    """ComfyUI's SD3 spacing: each of the ``N`` outputs repeated ``depth // N`` times, the last one once less."""
    count = depth // len(outputs)
    spread: list[Tensor | None] = []
    for index, output in enumerate(outputs):
        spread.extend([output] * (count - 1 if index == len(outputs) - 1 else count))
    return spread


class SD3ControlNet(nn.Module):
    """See the module docstring. ``forward`` returns ``{"double": [one residual per main-model joint block]}``."""

    pos_embed: Tensor
    hint_format: LatentFormat | None = SD3_HINT_FORMAT

    def __init__(self, config: SD3ControlNetConfig) -> None:
        super().__init__()
        self.config = config
        m = config.mmdit
        hidden = m.hidden_size
        self.x_embedder = PatchEmbed(m.patch_size, m.in_channels, hidden)
        self.register_buffer("pos_embed", torch.zeros(1, m.pos_embed_max_size**2, hidden))
        self.t_embedder = EmbedderMLP(TIMESTEP_FREQUENCIES, hidden)
        self.y_embedder = EmbedderMLP(m.pooled_dim, hidden)
        self.context_embedder = nn.Linear(m.context_in_dim, hidden)
        self.joint_blocks = nn.ModuleList(JointBlock(m, i, context_pre_only=False) for i in range(m.depth))
        self.controlnet_blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(m.depth))
        self.pos_embed_input = PatchEmbed(m.patch_size, config.hint_channels, hidden)

    @property
    def in_channels(self) -> int:
        """Latent channels the net reads (16)."""
        return self.config.mmdit.in_channels

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def _positions(self, grid_h: int, grid_w: int) -> Tensor:
        """The centre ``grid_h`` x ``grid_w`` window of the position table (as the MMDiT crops its own)."""
        size = self.config.mmdit.pos_embed_max_size
        if grid_h > size or grid_w > size:
            raise ValueError(f"latent of {grid_h}x{grid_w} patches exceeds the ControlNet's {size}x{size} position "
                             "table; generate a smaller image")
        top, left = (size - grid_h) // 2, (size - grid_w) // 2
        table = self.pos_embed.view(1, size, size, -1)[:, top:top + grid_h, left:left + grid_w]
        return table.reshape(1, grid_h * grid_w, -1)

    def block_outputs(self, x: Tensor, hint: Tensor, timesteps: Tensor, context: Tensor) -> list[Tensor]:
        """``controlnet_blocks.i`` of each block's image tokens ``[B, tokens, hidden]`` for latent ``x``, hint
        latent ``hint`` (already in :data:`hint_format`), ``timesteps`` (sigma * 1000) and text ``context``."""
        p, dtype = self.config.mmdit.patch_size, self.dtype
        x, hint = _pad(x.to(dtype), p), _pad(hint.to(dtype), p)
        tokens = self.x_embedder(x) + self._positions(x.shape[-2] // p, x.shape[-1] // p).to(dtype)
        tokens = tokens + self.pos_embed_input(hint)
        frequencies = timestep_embedding(timesteps, TIMESTEP_FREQUENCIES).to(dtype)
        pooled = torch.zeros(x.shape[0], self.config.mmdit.pooled_dim, device=x.device, dtype=dtype)
        c = self.t_embedder(frequencies) + self.y_embedder(pooled)
        stream: Tensor | None = self.context_embedder(context.to(dtype))
        outputs = []
        for block, zero in zip(self.joint_blocks, self.controlnet_blocks, strict=True):
            assert stream is not None  # no block of a ControlNet is pre-only
            stream, tokens = block(stream, tokens, c)
            outputs.append(zero(tokens))
        return outputs

    def forward(self, x: Tensor, hint: Tensor, timesteps: Tensor, context: Tensor, *, main_depth: int,
                **_: object) -> dict[str, list[Tensor | None]]:
        """Residuals for an MMDiT of ``main_depth`` joint blocks (see :func:`spread_residuals`)."""
        if main_depth < len(self.joint_blocks):
            raise ValueError(f"this ControlNet has {len(self.joint_blocks)} blocks, more than the model's {main_depth}")
        return {"double": spread_residuals(self.block_outputs(x, hint, timesteps, context), main_depth)}


def _pad(x: Tensor, patch_size: int) -> Tensor:
    """Circular padding of the bottom/right edges up to a multiple of ``patch_size`` (as the MMDiT pads)."""
    pad_h, pad_w = (-x.shape[-2]) % patch_size, (-x.shape[-1]) % patch_size
    return F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x
