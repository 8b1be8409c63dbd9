"""Module names in diffusers' layout and in the original (LDM / SGM) checkpoint layout: the one table.

Loom's modules carry the checkpoint names (``input_blocks.1.1.transformer_blocks.0.attn1.to_q``);
diffusers, PEFT and kohya's SD1.x LoRAs use diffusers' names
(``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``). The two differ only in how blocks
are numbered and in the names inside a ResBlock; everything inside a SpatialTransformer is the same.

UNet block correspondence, level by level (``l``; diffusers numbers up blocks deepest first, so
``u = levels - 1 - l``), ``i`` counting ResBlocks within a level:

=====================================  ==============================================
LDM                                    diffusers
=====================================  ==============================================
``input_blocks.0.0``                   ``conv_in``
``input_blocks.N.0`` / ``.N.1``        ``down_blocks.l.resnets.i`` / ``.attentions.i``
``input_blocks.N.0.op``                ``down_blocks.l.downsamplers.0.conv``
``middle_block.0`` / ``.1`` / ``.2``   ``mid_block.resnets.0`` / ``.attentions.0`` / ``.resnets.1``
``output_blocks.N.0`` / ``.N.1``       ``up_blocks.u.resnets.i`` / ``.attentions.i``
``output_blocks.N.{1|2}.conv``         ``up_blocks.u.upsamplers.0.conv`` (index 2 after an attention)
``time_embed.0`` / ``.2``              ``time_embedding.linear_1`` / ``.linear_2``
``label_emb.0.0`` / ``.0.2``           ``add_embedding.linear_1`` / ``.linear_2`` (SDXL)
``label_emb``                          ``class_embedding`` (a class-label table: the x4 upscaler)
``out.0`` / ``out.2``                  ``conv_norm_out`` / ``conv_out``
=====================================  ==============================================

Inside a ResBlock: ``in_layers.0/2`` = ``norm1``/``conv1``, ``emb_layers.1`` = ``time_emb_proj``,
``out_layers.0/3`` = ``norm2``/``conv2``, ``skip_connection`` = ``conv_shortcut``.

The block numbering depends only on the :class:`UNetLayout` (levels, ResBlocks per level, which
blocks have a transformer), which comes from a :class:`~engine.backend.unet.UNetConfig` (any family,
any ``channel_mult`` / ``num_res_blocks`` / depths) or from the keys of a diffusers state dict.

Text encoders: Loom's towers are transformers' ``CLIPTextModel``; a layer's LoRA-able modules are
:data:`CLIP_LAYER_MODULES` under ``encoder.layers.N.``, which diffusers/PEFT spell with a
``text_model.`` in front and kohya with ``_`` for ``.`` (see :func:`clip_layer_modules`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from engine.backend.unet import UNetConfig

__all__ = [
    "CLIP_LAYER_MODULES",
    "RESNET_LDM_TO_DIFFUSERS",
    "UNetLayout",
    "UNetNames",
    "clip_layer_modules",
    "diffusers_unet_to_ldm",
    "diffusers_vae_key_to_ldm",
    "unet_names",
]

T = TypeVar("T")

#: ResBlock sub-module names: LDM -> diffusers.
RESNET_LDM_TO_DIFFUSERS: dict[str, str] = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESNET_DIFFUSERS_TO_LDM = {v: k for k, v in RESNET_LDM_TO_DIFFUSERS.items()}

_FIXED: tuple[tuple[str, str], ...] = (
    ("input_blocks.0.0", "conv_in"),
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
    ("label_emb", "class_embedding"),  # a class-label table (the SD x4 upscaler's noise level)
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
)

#: The weight-bearing modules of one CLIP encoder layer that LoRAs train (HF names).
CLIP_LAYER_MODULES: tuple[str, ...] = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2",
)


@dataclass(frozen=True)
class UNetLayout:
    """What block numbering depends on: ResBlocks per level and which blocks carry a transformer.

    ``input_attention`` has one entry per input ResBlock (level by level), ``output_attention`` one
    per output ResBlock (deepest level first, ``num_res_blocks[l] + 1`` per level).
    """

    num_res_blocks: tuple[int, ...]
    input_attention: tuple[bool, ...]
    output_attention: tuple[bool, ...]
    middle_attention: bool

    @classmethod
    def from_config(cls, config: UNetConfig) -> UNetLayout:
        return cls(tuple(config.num_res_blocks), tuple(d > 0 for d in config.transformer_depth),
                   tuple(d > 0 for d in config.transformer_depth_output), config.transformer_depth_middle > 0)

    @classmethod
    def from_diffusers_keys(cls, keys: Iterable[str]) -> UNetLayout:
        """The layout of a diffusers ``UNet2DConditionModel`` state dict (or of its module names)."""
        names = set(keys)
        found: dict[tuple[str, int, str], set[int]] = {}
        for name in names:
            if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", name):
                found.setdefault((m.group(1), int(m.group(2)), m.group(3)), set()).add(int(m.group(4)))
        levels = 1 + max((level for kind, level, _ in found if kind == "down"), default=-1)
        if not levels:
            raise ValueError("no diffusers UNet keys (down_blocks.N.resnets.M...) found")
        res = tuple(len(found.get(("down", level, "resnets"), ())) for level in range(levels))
        inputs = tuple(i in found.get(("down", level, "attentions"), set())
                       for level in range(levels) for i in range(res[level]))
        outputs = tuple(i in found.get(("up", up, "attentions"), set())
                        for up in range(levels) for i in range(res[levels - 1 - up] + 1))
        middle = any(name.startswith("mid_block.attentions.0.") for name in names)
        return cls(res, inputs, outputs, middle)


@dataclass(frozen=True)
class _Block:
    ldm: str
    diffusers: str
    resnet: bool


def _blocks(layout: UNetLayout) -> list[_Block]:
    """Every block of the layout, in both namings (module paths without a trailing dot)."""
    blocks = [_Block(ldm, diffusers, False) for ldm, diffusers in _FIXED]
    levels = len(layout.num_res_blocks)
    attention = iter(layout.input_attention)
    n = 1
    for level, count in enumerate(layout.num_res_blocks):
        for i in range(count):
            blocks.append(_Block(f"input_blocks.{n}.0", f"down_blocks.{level}.resnets.{i}", True))
            if next(attention):
                blocks.append(_Block(f"input_blocks.{n}.1", f"down_blocks.{level}.attentions.{i}", False))
            n += 1
        if level != levels - 1:
            blocks.append(_Block(f"input_blocks.{n}.0.op", f"down_blocks.{level}.downsamplers.0.conv", False))
            n += 1
    blocks.append(_Block("middle_block.0", "mid_block.resnets.0", True))
    if layout.middle_attention:
        blocks.append(_Block("middle_block.1", "mid_block.attentions.0", False))
    blocks.append(_Block(f"middle_block.{2 if layout.middle_attention else 1}", "mid_block.resnets.1", True))
    attention = iter(layout.output_attention)
    n = 0
    for up, level in enumerate(reversed(range(levels))):
        count = layout.num_res_blocks[level]
        for i in range(count + 1):
            has_attention = next(attention)
            blocks.append(_Block(f"output_blocks.{n}.0", f"up_blocks.{up}.resnets.{i}", True))
            if has_attention:
                blocks.append(_Block(f"output_blocks.{n}.1", f"up_blocks.{up}.attentions.{i}", False))
            if level and i == count:
                index = 2 if has_attention else 1
                blocks.append(_Block(f"output_blocks.{n}.{index}.conv", f"up_blocks.{up}.upsamplers.0.conv", False))
            n += 1
    return blocks


class UNetNames:
    """Converts UNet module or parameter names between the LDM and diffusers layouts of one layout.

    Names may be module paths (``input_blocks.1.1.proj_in``) or parameter names (``...proj_in.weight``).
    A name outside the layout raises ``KeyError`` naming it.
    """

    def __init__(self, layout: UNetLayout) -> None:
        self.layout = layout
        blocks = _blocks(layout)
        self._by_ldm = {block.ldm: block for block in blocks}
        self._by_diffusers = {block.diffusers: block for block in blocks}

    def to_diffusers(self, ldm_name: str) -> str:
        block, rest = _split(ldm_name, self._by_ldm)
        return _join(block.diffusers, _rename_resnet(rest, RESNET_LDM_TO_DIFFUSERS) if block.resnet else rest)

    def to_ldm(self, diffusers_name: str) -> str:
        block, rest = _split(diffusers_name, self._by_diffusers)
        return _join(block.ldm, _rename_resnet(rest, _RESNET_DIFFUSERS_TO_LDM) if block.resnet else rest)

    def ldm_blocks(self) -> list[str]:
        return list(self._by_ldm)


def _split(name: str, blocks: Mapping[str, _Block]) -> tuple[_Block, str]:
    """The longest block path that ``name`` starts with (at a dot boundary) and the rest."""
    parts = name.split(".")
    for end in range(min(len(parts), 6), 0, -1):
        block = blocks.get(".".join(parts[:end]))
        if block is not None:
            return block, ".".join(parts[end:])
    raise KeyError(f"{name!r} is not a module of this UNet layout")


def _join(block: str, rest: str) -> str:
    return f"{block}.{rest}" if rest else block


def _rename_resnet(rest: str, table: Mapping[str, str]) -> str:
    parts = rest.split(".")
    for end in (2, 1):
        head = ".".join(parts[:end])
        if head in table:
            return _join(table[head], ".".join(parts[end:]))
    if not rest:
        return rest
    raise KeyError(f"{rest!r} is not a part of a ResBlock")


@functools.lru_cache(maxsize=16)
def unet_names(layout: UNetLayout) -> UNetNames:
    """The (cached) name converter of a layout."""
    return UNetNames(layout)


def diffusers_unet_to_ldm(state_dict: Mapping[str, T], config: UNetConfig | None = None) -> dict[str, T]:
    """Rename a diffusers ``UNet2DConditionModel`` state dict to LDM names (without ``model.diffusion_model.``).

    The layout comes from ``config`` when given, else from the state dict's own keys.
    """
    layout = UNetLayout.from_config(config) if config is not None else UNetLayout.from_diffusers_keys(state_dict)
    names = unet_names(layout)
    return {names.to_ldm(key): value for key, value in state_dict.items()}


def clip_layer_modules(num_layers: int) -> list[str]:
    """HF module paths (relative to the text transformer: ``encoder.layers.N.self_attn.q_proj``) of
    every LoRA-able linear of a CLIP text encoder with ``num_layers`` layers."""
    return [f"encoder.layers.{layer}.{name}" for layer in range(num_layers) for name in CLIP_LAYER_MODULES]


# --------------------------------------------------------------------------------------------- VAE

_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_vae_key_to_ldm(key: str, levels: int = 4) -> str:
    """The LDM name (without ``first_stage_model.``) of a diffusers AutoencoderKL parameter."""
    if key.startswith(("quant_conv.", "post_quant_conv.")) or re.fullmatch(r"(en|de)coder\.conv_(in|out)\..+", key):
        return key
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m.group(1)}.norm_out.{m.group(2)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)\.(.+)", key):
        return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_VAE_RESNET[m.group(3)]}.{m.group(4)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m.group(1)}.mid.attn_1.{_VAE_ATTN[m.group(2)]}.{m.group(3)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", key):
        return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_VAE_RESNET[m.group(3)]}.{m.group(4)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}.{_VAE_RESNET[m.group(3)]}.{m.group(4)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
    raise KeyError(f"no LDM name for diffusers VAE key {key!r}")
