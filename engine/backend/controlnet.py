"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models") in
the LDM layout.

A ControlNet is a trainable copy of a UNet's encoder (``time_embed``, ``label_emb`` for SDXL,
``input_blocks``, ``middle_block``, built by the same builders as :class:`~engine.backend.unet.UNetModel`)
plus:

* ``input_hint_block``: eight 3x3 convs with SiLU between them (indices 0, 2, ..., 14) that bring the
  hint image (pixels) down 8x to the latent grid: widths hint -> 16 -> 16 -> 32 (stride 2) -> 32 ->
  96 (stride 2) -> 96 -> 256 (stride 2) -> model_channels. Its output is added to the output of
  ``input_blocks.0`` (the input conv).
* ``zero_convs.N.0``: one 1x1 conv per input block, applied to that block's output;
  ``middle_block_out.0``: a 1x1 conv on the middle block's output. Zero-initialised for training, so
  a fresh ControlNet changes nothing.

Parameter names equal the keys of LDM ControlNet files with ``control_model.`` removed.
:meth:`ControlNet.forward` returns ``{"output": [...], "middle": [...]}``, the residual lists
:meth:`UNetModel.forward(control=...) <engine.backend.unet.UNetModel.forward>` consumes: one
``output`` entry per input block in input order (the UNet takes them from the end, deepest first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from engine.backend.unet import (
    UNetConfig,
    UNetModel,
    build_input_blocks,
    build_middle_block,
    build_time_embeddings,
    embed_timesteps,
)

__all__ = ["HINT_WIDTHS", "ControlNet", "ControlNetConfig", "compatibility_problem"]

#: Output widths of the hint convs before the last one (which outputs ``model_channels``); the
#: 3rd, 5th and 7th convs have stride 2.
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)
_HINT_STRIDED = (2, 4, 6)

Shapes = Mapping[str, Any]


@dataclass(frozen=True)
class ControlNetConfig:
    """A ControlNet's structure: the configuration of the UNet encoder it copies and the hint channels."""

    unet: UNetConfig
    hint_channels: int = 3

    @classmethod
    def from_state_dict(cls, shapes: Shapes, prefix: str = "") -> ControlNetConfig:
        """Infer the configuration from LDM ControlNet names and shapes (e.g. ``prefix="control_model."``).

        The encoder is inferred like a UNet's (see :meth:`UNetConfig.from_state_dict`, same head rule);
        ``hint_channels`` is the input width of ``input_hint_block.0.weight``.
        """
        hint_key = f"{prefix}input_hint_block.0.weight"
        if hint_key not in shapes:
            raise ValueError(f"no ControlNet weights: {hint_key} is missing")
        hint = shapes[hint_key]
        hint_channels = int((tuple(hint.shape) if hasattr(hint, "shape") else tuple(hint))[1])
        return cls(UNetConfig.from_state_dict(shapes, prefix, encoder_only=True), hint_channels)

    @property
    def family(self) -> str:
        """The model family this ControlNet was made for, from its context (and adm) width:
        ``sd1`` (768), ``sd2`` (1024), ``sdxl`` (2048), ``sdxl_refiner`` (1280); for other widths
        (tiny test models) a guess from the layout (adm -> sdxl, linear projections -> sd2, else sd1)."""
        known = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
        u = self.unet
        if u.context_dim in known:
            return known[u.context_dim]
        if u.adm_in_channels is not None:
            return "sdxl"
        return "sd2" if u.use_linear_in_transformer else "sd1"

    def describe(self) -> str:
        u = self.unet
        labels = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
        return f"a {labels[self.family]} ControlNet (context {u.context_dim}, {u.model_channels} channels)"

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name and shape of a ControlNet with this configuration."""
        with torch.device("meta"):
            model = ControlNet(self)
        return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def compatibility_problem(config: ControlNetConfig, unet: UNetConfig) -> str | None:
    """Why a ControlNet cannot steer a UNet (residual shapes or conditioning differ), or None."""
    c = config.unet
    if c.context_dim != unet.context_dim:
        return f"its text conditioning is {c.context_dim} wide, the model's {unet.context_dim}"
    if c.adm_in_channels != unet.adm_in_channels:
        return f"its adm (SDXL size/pooled) input is {c.adm_in_channels}, the model's {unet.adm_in_channels}"
    if (c.model_channels, c.channel_mult, c.num_res_blocks) != (
        unet.model_channels,
        unet.channel_mult,
        unet.num_res_blocks,
    ):
        return (
            f"its blocks (channels {c.model_channels}, mult {c.channel_mult}, res blocks {c.num_res_blocks}) "
            f"differ from the model's ({unet.model_channels}, {unet.channel_mult}, {unet.num_res_blocks})"
        )
    if c.in_channels > unet.in_channels:
        return f"it reads {c.in_channels} latent channels, the model has {unet.in_channels}"
    return None


def _conv1x1(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 1))


def _hint_block(hint_channels: int, model_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = hint_channels
    for index, out in enumerate((*HINT_WIDTHS, model_channels)):
        stride = 2 if index in _HINT_STRIDED else 1
        layers.append(nn.Conv2d(width, out, 3, stride=stride, padding=1))
        if index < len(HINT_WIDTHS):
            layers.append(nn.SiLU())
        width = out
    return nn.Sequential(*layers)


class ControlNet(nn.Module):
    """The LDM ControlNet; see the module docstring. Build on the meta device to skip random init
    when weights will be loaded (``load_weights``), as for the UNet."""

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.unet
        self.time_embed, label_emb = build_time_embeddings(c)
        if label_emb is not None:
            self.label_emb = label_emb
        self.input_hint_block = _hint_block(config.hint_channels, c.model_channels)
        self.input_blocks, widths = build_input_blocks(c)
        self.zero_convs = nn.ModuleList(_conv1x1(width) for width in widths)
        self.middle_block = build_middle_block(c, widths[-1])
        self.middle_block_out = _conv1x1(widths[-1])

    @property
    def in_channels(self) -> int:
        """Latent channels the encoder reads (4; 9 for ControlNets made from inpainting UNets)."""
        return self.config.unet.in_channels

    @classmethod
    def from_unet(cls, unet: UNetModel, hint_channels: int = 3) -> ControlNet:
        """A new, trainable ControlNet for ``unet``: a copy of its encoder weights, a freshly initialised
        hint block whose last conv is zero, and zero ``zero_convs`` / ``middle_block_out``, so its
        residuals are zero until trained. Placed on the UNet's device and dtype, ``requires_grad``
        on every parameter, in train mode."""
        reference = cast(nn.Linear, unet.time_embed[0]).weight
        device = reference.device if reference.device.type != "meta" else torch.device("cpu")
        model = cls(ControlNetConfig(unet.config, hint_channels)).to(device=device, dtype=reference.dtype)
        copied = ["time_embed", "input_blocks", "middle_block"]
        if unet.config.adm_in_channels is not None:
            copied.append("label_emb")
        with torch.no_grad():
            for name in copied:
                source = unet.get_submodule(name).state_dict()
                model.get_submodule(name).load_state_dict(source, strict=True)
            zeroed = [model.input_hint_block[-1], *model.zero_convs, model.middle_block_out]
            for module in zeroed:
                for parameter in module.parameters():
                    parameter.zero_()
        return model.requires_grad_(True).train()

    def encode_hint(self, hint: Tensor) -> Tensor:
        """The hint block's features of hint images ``[B, hint_channels, 8h, 8w]`` (0..1): they depend on
        the hint alone, so a sampler computes them once and passes them to every step (``hint_features``)."""
        return self.input_hint_block(hint.to(cast(nn.Linear, self.time_embed[0]).weight.dtype))

    def forward(
        self, x: Tensor, hint: Tensor | None, timesteps: Tensor, context: Tensor | None, y: Tensor | None = None,
        *, hint_features: Tensor | None = None,
    ) -> dict[str, list[Tensor]]:
        """Residuals for latents ``x`` ``[B, in_channels, h, w]`` and hint images ``hint``
        ``[B, hint_channels, 8h, 8w]`` (0..1) at ``timesteps`` ``[B]`` with text ``context`` (and SDXL's
        ``y``): ``{"output": [one per input block, in order], "middle": [one]}``, in the parameters' dtype.
        ``hint_features`` (:meth:`encode_hint` of the hint, batch ``B``) replaces ``hint``.
        """
        c = self.config.unet
        dtype = cast(nn.Linear, self.time_embed[0]).weight.dtype
        emb = embed_timesteps(self.time_embed, getattr(self, "label_emb", None), c.model_channels, timesteps, y)
        if context is not None:
            context = context.to(dtype)
        elif c.context_dim is not None:
            raise ValueError("this ControlNet has cross-attention: pass context, the text conditioning")
        if hint_features is None:
            if hint is None:
                raise ValueError("pass the hint image or its hint_features")
            hint_features = self.encode_hint(hint)
        guided: Tensor | None = hint_features.to(dtype)
        h = x.to(dtype)
        outputs: list[Tensor] = []
        for block, zero_conv in zip(self.input_blocks, self.zero_convs, strict=True):
            h = block(h, emb, context)
            if guided is not None:
                if guided.shape[-2:] != h.shape[-2:]:
                    pixels = tuple(8 * d for d in guided.shape[-2:])
                    raise ValueError(f"the hint is {pixels} pixels but the latent is {tuple(x.shape[-2:])}: "
                                     "the hint must be 8x the latent size")
                h = h + guided
                guided = None
            outputs.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        return {"output": outputs, "middle": [self.middle_block_out(h)]}
