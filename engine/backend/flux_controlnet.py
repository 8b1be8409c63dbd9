"""Flux.1 ControlNets: InstantX's (diffusers' ``FluxControlNetModel`` layout, also the Union / "Pro" nets with a
mode embedding) and XLabs' (``x-flux`` layout, the hint on pixels).

A shortened copy of the Flux transformer (engine/backend/flux.py): ``img_in``, ``txt_in``, the time / guidance /
pooled-vector embedders, ``N`` double and ``M`` single blocks and no final layer. The hint enters as patch tokens
through ``pos_embed_input`` (a Linear), added to ``img_in``'s tokens before the first block:

* InstantX: the control image's VAE latent in Flux's latent format (``hint_format``), 2x2-patchified (64 channels;
  68 for an inpainting net whose extra channel is the mask, all ones here as in ComfyUI without a mask);
* XLabs: the control image itself (0..1, scaled to -1..1) through ``input_hint_block``, eight 3x3 convs (16 wide,
  SiLU between, strides 1, 1, 2, 1, 2, 1, 2, 1) down to the latent grid, then patchified.

A union net (``controlnet_mode_embedder``, an Embedding of ``union_modes`` rows) puts the chosen mode's row before
the text tokens (position id zero); with no mode set ("auto") it runs without that token, as ComfyUI does.
After double block ``i`` the image tokens go through ``controlnet_blocks.i``, after single block ``j`` the image part
of the sequence through ``controlnet_single_blocks.j``: one residual per block. The main model receives them after
its own blocks at ComfyUI's (and diffusers') spacing: InstantX's repeat each residual ``ceil(depth / N)`` times in a
row, XLabs' cycle through theirs; both cut to the model's block count.

Parameter names follow the Flux single-file names (``double_blocks.N.img_attn.qkv``, ...) plus
``controlnet_blocks.N``, ``controlnet_single_blocks.N``, ``pos_embed_input``, ``input_hint_block.{0,2,...,14}`` and
``controlnet_mode_embedder``; the loader (engine/models/flow_controlnet_load.py) renames InstantX's diffusers keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.flux import (
    EMBED_DIM,
    FLUX_DEV,
    PATCH,
    TIME_FACTOR,
    DoubleStreamBlock,
    FluxConfig,
    MLPEmbedder,
    SingleStreamBlock,
    image_ids,
    patchify,
    rope_frequencies,
)
from engine.backend.latent_formats import FLUX, LatentFormat
from engine.backend.unet import timestep_embedding

__all__ = ["HINT_STRIDES", "FluxControlNet", "FluxControlNetConfig"]

#: Strides of XLabs' eight hint convs (3 -> 16 -> ... -> 16 channels): the hint comes down 8x.
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2, 1)
_HINT_WIDTH = 16


@dataclass(frozen=True)
class FluxControlNetConfig:
    """``flux``: the shape of the copied transformer (``depth`` / ``depth_single_blocks`` = this net's blocks);
    ``hint_channels``: input width of ``pos_embed_input``; ``union_modes``: rows of the mode embedding (0: none);
    ``pixel_hint``: XLabs' ``input_hint_block`` on pixels (else a latent hint, InstantX)."""

    flux: FluxConfig = FLUX_DEV
    hint_channels: int = 64
    union_modes: int = 0
    pixel_hint: bool = False

    def describe(self) -> str:
        f = self.flux
        kind = "an XLabs" if self.pixel_hint else "an InstantX union" if self.union_modes else "an InstantX"
        return (f"{kind} Flux ControlNet ({f.depth} double, {f.depth_single_blocks} single blocks, hidden "
                f"{f.hidden_size}{f', {self.union_modes} modes' if self.union_modes else ''})")


def _hint_block() -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, stride in enumerate(HINT_STRIDES):
        layers.append(nn.Conv2d(3 if index == 0 else _HINT_WIDTH, _HINT_WIDTH, 3, stride=stride, padding=1))
        if index < len(HINT_STRIDES) - 1:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _embed_scalar(values: Tensor, dtype: torch.dtype) -> Tensor:
    return timestep_embedding(values.float() * TIME_FACTOR, EMBED_DIM).to(dtype)


class FluxControlNet(nn.Module):
    """See the module docstring. ``forward`` returns ``{"double": [...], "single": [...]}``, one entry per block of
    the main model (``single`` only when the net has single blocks)."""

    def __init__(self, config: FluxControlNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.flux
        hidden = c.hidden_size
        self.img_in = nn.Linear(c.in_channels, hidden)
        self.time_in = MLPEmbedder(EMBED_DIM, hidden)
        self.vector_in = MLPEmbedder(c.vec_in_dim, hidden)
        self.guidance_in = MLPEmbedder(EMBED_DIM, hidden) if c.guidance_embed else None
        self.txt_in = nn.Linear(c.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(hidden, c.num_heads, c.mlp_hidden, c.qkv_bias) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, c.num_heads, c.mlp_hidden) for _ in range(c.depth_single_blocks))
        self.controlnet_blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(c.depth))
        self.controlnet_single_blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(c.depth_single_blocks))
        self.pos_embed_input = nn.Linear(config.hint_channels, hidden)
        self.controlnet_mode_embedder = nn.Embedding(config.union_modes, hidden) if config.union_modes else None
        self.input_hint_block = _hint_block() if config.pixel_hint else None

    @property
    def in_channels(self) -> int:
        """Latent channels the net reads (16)."""
        return self.config.flux.in_channels // (PATCH * PATCH)

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    @property
    def hint_format(self) -> LatentFormat | None:
        """How the hint's VAE latent is scaled (Flux's format), or None for a hint on pixels (XLabs)."""
        return None if self.config.pixel_hint else FLUX

    def _hint_tokens(self, hint: Tensor) -> Tensor:
        if self.input_hint_block is not None:
            hint = self.input_hint_block(hint.to(self.dtype) * 2.0 - 1.0)
        hint = F.pad(hint.to(self.dtype), (0, (-hint.shape[-1]) % PATCH, 0, (-hint.shape[-2]) % PATCH),
                     mode="circular")
        return self.pos_embed_input(patchify(hint))

    def _vector(self, timesteps: Tensor, y: Tensor | None, guidance: Tensor | None, batch: int) -> Tensor:
        dtype, c = self.dtype, self.config.flux
        vec = self.time_in(_embed_scalar(timesteps, dtype))
        if self.guidance_in is not None:
            if guidance is None:
                raise ValueError("this Flux ControlNet embeds a distilled guidance scale: pass guidance")
            vec = vec + self.guidance_in(_embed_scalar(guidance, dtype))
        if y is None:
            y = torch.zeros(batch, c.vec_in_dim, device=vec.device, dtype=dtype)
        return vec + self.vector_in(y[:, :c.vec_in_dim].to(dtype))

    def _text(self, context: Tensor, control_type: int | None) -> Tensor:
        txt = self.txt_in(context.to(self.dtype))
        if control_type is None or self.controlnet_mode_embedder is None:
            return txt
        if not 0 <= control_type < self.config.union_modes:
            raise ValueError(f"this Flux union ControlNet knows {self.config.union_modes} modes; type index "
                             f"{control_type} is not one of them: pick another type in SetUnionControlNetType")
        mode = self.controlnet_mode_embedder.weight[control_type].to(txt.dtype)
        return torch.cat((mode.expand(txt.shape[0], 1, -1), txt), dim=1)

    def block_outputs(self, x: Tensor, hint: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None,
                      guidance: Tensor | None = None, control_type: int | None = None
                      ) -> tuple[list[Tensor], list[Tensor]]:
        """The double and single blocks' outputs through their ``controlnet_*blocks`` (``[B, N, hidden]``) for
        latent ``x`` ``[B, 16, H, W]``, ``hint`` (a latent in :attr:`hint_format`, or pixels 0..1 at 8x the size),
        ``timesteps`` (sigma), text ``context``, pooled ``y``, ``guidance`` and a union ``control_type``."""
        batch, _, height, width = x.shape
        x = F.pad(x.to(self.dtype), (0, (-width) % PATCH, 0, (-height) % PATCH), mode="circular")
        rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        img = self.img_in(patchify(x)) + self._hint_tokens(hint)
        vec = self._vector(timesteps, y, guidance, batch)
        txt = self._text(context, control_type)
        ids = torch.cat((torch.zeros(batch, txt.shape[1], 3, device=x.device), image_ids(batch, rows, cols, x.device)),
                        dim=1)
        rope = rope_frequencies(ids, self.config.flux.axes_dim, self.config.flux.theta)
        doubles = []
        for block, zero in zip(self.double_blocks, self.controlnet_blocks, strict=True):
            img, txt = block(img, txt, vec, rope)
            doubles.append(zero(img))
        joint = torch.cat((txt, img), dim=1)
        singles = []
        for single, zero in zip(self.single_blocks, self.controlnet_single_blocks, strict=True):
            joint = single(joint, vec, rope)
            singles.append(zero(joint[:, txt.shape[1]:]))
        return doubles, singles

    def spread(self, outputs: list[Tensor], depth: int) -> list[Tensor | None]:
        """One residual per main-model block: InstantX's in runs of ``ceil(depth / N)``, XLabs' cycled."""
        repeat = math.ceil(depth / len(outputs))
        spread: list[Tensor | None] = []
        if self.config.pixel_hint:
            spread.extend((outputs * repeat)[:depth])
        else:
            spread.extend([output for output in outputs for _ in range(repeat)][:depth])
        return spread

    def forward(self, x: Tensor, hint: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None,
                guidance: Tensor | None = None, *, main_depth: int, main_single: int,
                control_type: int | None = None) -> dict[str, list[Tensor | None]]:
        """Residuals for a Flux model of ``main_depth`` double and ``main_single`` single blocks."""
        doubles, singles = self.block_outputs(x, hint, timesteps, context, y, guidance, control_type)
        out = {"double": self.spread(doubles, main_depth)}
        if singles and main_single:
            out["single"] = self.spread(singles, main_single)
        return out
