"""Resolving a parsed LoRA file against one loaded model part, and telling a LoRA of another family.

:func:`describe_part` summarises a loaded UNet, TextEncoder, SD3/SD3.5 MMDiT or Flux.1 transformer (its
LoRA key names, parameter shapes, cross-attention width, towers); :func:`build_plan` maps every adapter of
a LoRA to the parameter it changes and checks that it fits. A transformer target that is part of a fused
weight (diffusers' ``to_q`` of SD3's ``qkv``, Flux's ``proj_mlp`` of ``linear1``) changes only its rows:
the parts of one weight become one :class:`~engine.models.lora_formats.RowBlocksAdapter`. Keys meant for
this part (text-encoder keys for a TextEncoder, the rest for the diffusion model) that match no weight,
or a weight of another shape, are named in one warning. A LoRA made for another family raises
:class:`~engine.errors.LoraMismatch`: keys for SDXL's second text encoder on a model with one, a
cross-attention width other than the model's, names of another architecture (a Flux LoRA on SD3, an SD1
LoRA on Flux), or no (or mostly wrong-shaped) matches. Nothing here touches weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from engine.backend.flux import Flux
from engine.backend.mmdit import MMDiT
from engine.backend.text import TextEncoder
from engine.backend.unet import UNetModel
from engine.errors import LoraMismatch
from engine.models.lora_families import KIND_LABELS, context_widths, kind_fits, looks_like, lora_kind, target_kind
from engine.models.lora_flow_keys import FlowKeyMap, RowTarget, flux_key_map, mmdit_key_map
from engine.models.lora_formats import Adapter, ParsedLora, RowBlock, RowBlocksAdapter, fits
from engine.models.lora_keys import SECOND_TOWER_PREFIXES, is_text_key, text_key_map, unet_key_map

__all__ = ["ModelPart", "PatchPlan", "build_plan", "describe_part"]

log = logging.getLogger(__name__)

_SHOWN_KEYS = 8


@dataclass(frozen=True)
class ModelPart:
    """What resolving a LoRA against one loaded module needs: names, shapes and the family's signature."""

    family: str  # the model's family label, e.g. "SD1.x"
    name: str  # "UNet" | "text encoder" | "transformer"
    text: bool  # a text encoder (takes lora_te* / text_encoder* keys) or a diffusion model (takes the rest)
    key_map: Mapping[str, str]  # LoRA target name -> module path
    shapes: Mapping[str, tuple[int, ...]]  # parameter name -> shape
    context_dim: int | None = None  # UNet cross-attention width
    towers: int = 0  # text encoders: how many towers
    kind: str = "unet"  # "unet" | "text" | "flow text" | "sd3" | "flux": the architecture, for LoRA checks
    row_targets: Mapping[str, RowTarget] = field(default_factory=dict)  # targets that are rows of a fused weight

    @property
    def label(self) -> str:
        return f"{self.family} {self.name}"


def describe_part(module: nn.Module, family_label: str) -> ModelPart:
    """The :class:`ModelPart` of a loaded UNet, TextEncoder, MMDiT (SD3/SD3.5) or Flux transformer."""
    shapes = {name: tuple(param.shape) for name, param in module.named_parameters()}
    paths = [name for name, sub in module.named_modules() if name and any(True for _ in sub.parameters(False))]
    if isinstance(module, UNetModel):
        return ModelPart(family_label, "UNet", False, unet_key_map(paths, module.config), shapes,
                         context_dim=module.config.context_dim)
    if isinstance(module, TextEncoder):  # SD3 / Flux text encoders (clip_l, clip_g, t5xxl) are "flow text"
        kind = "flow text" if module.family in ("sd3", "flux") else "text"
        return ModelPart(family_label, "text encoder", True, text_key_map(module), shapes,
                         towers=len(module.towers), kind=kind)
    flow: tuple[str, FlowKeyMap] | None = None
    if isinstance(module, MMDiT):
        flow = "sd3", mmdit_key_map(paths, module.config)
    elif isinstance(module, Flux):
        flow = "flux", flux_key_map(paths, module.config)
    if flow is not None:
        kind, key_map = flow
        return ModelPart(family_label, "transformer", False, key_map.modules, shapes, kind=kind,
                         row_targets=key_map.rows)
    raise TypeError("LoRA patches apply to a UNet, a text encoder or an SD3/Flux transformer, "
                    f"not to {type(module).__name__}")


@dataclass(frozen=True)
class PatchPlan:
    """One LoRA file resolved against one model part: parameter name -> adapter."""

    file: str
    targets: Mapping[str, Adapter]


@dataclass
class _Resolution:
    targets: dict[str, Adapter] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)  # LoRA targets with no module
    mismatched: list[str] = field(default_factory=list)  # "target (kind [delta shape] vs [weight shape])"
    skipped: list[str] = field(default_factory=list)  # what the warning names: keys, or targets with shapes
    skipped_keys: int = 0  # file keys not applied
    matched: int = 0  # adapters (a target's weight or bias) that fit their weight


def build_plan(parsed: ParsedLora, file_name: str, part: ModelPart) -> PatchPlan:
    """Resolve a parsed LoRA against a model part; warn once about keys that were not used.

    Raises :class:`LoraMismatch` when the LoRA was made for another family: keys for a second text
    encoder the model lacks, a cross-attention width other than the model's, target names of another
    architecture, or no / mostly wrong-shaped matches among the keys meant for this part.
    """
    found = _resolve(parsed, part)
    _check_family(parsed, file_name, part, found)
    for key, why in parsed.unused.items():
        if is_text_key(key) == part.text:
            found.skipped.append(f"{key} ({why})")
            found.skipped_keys += 1
    if found.skipped:
        total = sum(1 for key in parsed.all_keys if is_text_key(key) == part.text)
        log.warning("LoRA %s: %d of %d keys for the %s were not applied (no such weight, another shape or an "
                    "unsupported format): %s%s", file_name, found.skipped_keys, total, part.label,
                    ", ".join(found.skipped[:_SHOWN_KEYS]), " ..." if len(found.skipped) > _SHOWN_KEYS else "")
    return PatchPlan(file_name, found.targets)


def _resolve(parsed: ParsedLora, part: ModelPart) -> _Resolution:
    found = _Resolution()
    blocks: dict[str, dict[RowBlock | None, Adapter]] = {}  # parameter -> its row blocks' adapters (None: all)
    for name, adapters in parsed.adapters.items():
        if is_text_key(name) != part.text:
            continue
        target = _target(part, name)
        if target is None:
            found.unmatched.append(name)
            found.skipped.append(f"{name} (no such weight)")
            found.skipped_keys += len(parsed.keys[name])
            continue
        module, block = target
        for leaf, adapter in adapters.items():
            param = f"{module}.{leaf}"
            shape = part.shapes.get(param)
            if shape is None or not _fits_block(adapter, shape, block):
                what = f"{name} ({adapter.kind} {list(adapter.delta_shape())} vs {_describe(shape, block)})"
                found.mismatched.append(what)
                found.skipped.append(what)
                found.skipped_keys += len(parsed.keys[name]) if len(adapters) == 1 else 1
                continue
            blocks.setdefault(param, {})[block] = adapter
            found.matched += 1
    for param, parts in blocks.items():
        found.targets[param] = _combined(part.shapes[param], parts)
    return found


def _target(part: ModelPart, name: str) -> tuple[str, RowBlock | None] | None:
    """(module path, row block or None for the whole weight) of a LoRA target name, None when it names nothing."""
    rows = part.row_targets.get(name)
    if rows is not None:
        return rows.module, rows.block
    module = part.key_map.get(name)
    return None if module is None else (module, None)


def _fits_block(adapter: Adapter, shape: tuple[int, ...], block: RowBlock | None) -> bool:
    if block is None:
        return fits(adapter, shape)
    return block.within(shape) and fits(adapter, block.shape_in(shape))


def _describe(shape: tuple[int, ...] | None, block: RowBlock | None) -> str:
    if shape is None or block is None:
        return f"weight {list(shape or ())}"
    return f"rows {block.start}..{block.start + block.rows} of weight {list(shape)}"


def _combined(shape: tuple[int, ...], parts: Mapping[RowBlock | None, Adapter]) -> Adapter:
    """One adapter of a parameter: the whole-weight adapter alone, else the row blocks together."""
    whole = parts.get(None)
    if whole is not None and len(parts) == 1:
        return whole
    blocks = tuple((block or RowBlock(0, shape[0]), adapter) for block, adapter in parts.items())
    return RowBlocksAdapter(shape, blocks)


def _check_family(parsed: ParsedLora, file_name: str, part: ModelPart, found: _Resolution) -> None:
    considered = found.matched + len(found.unmatched) + len(found.mismatched)
    if not considered:
        return
    looks = looks_like(parsed)
    advice = f"use a LoRA made for {part.family} models, or load a checkpoint of the LoRA's family"
    if part.kind == "text" and part.towers < 2:
        second = [name for name in found.unmatched if name.startswith(SECOND_TOWER_PREFIXES)]
        if second:
            raise LoraMismatch(f"LoRA {file_name} has keys for SDXL's second text encoder (e.g. {second[0]}), so it "
                               f"looks like {looks}; the model is {part.label}: {advice}")
    if not part.text:
        _check_architecture(parsed, file_name, part, found, looks, advice)
    if not found.targets:
        sample = ", ".join((found.mismatched or found.unmatched)[:3])
        raise LoraMismatch(f"LoRA {file_name}: 0 of its {considered} targets for the {part.label} match a weight "
                           f"(e.g. {sample}); it looks like {looks}: {advice}")
    if len(found.mismatched) > found.matched:
        raise LoraMismatch(f"LoRA {file_name}: {len(found.mismatched)} of {considered} targets have other shapes than "
                           f"the {part.label}'s weights (e.g. {found.mismatched[0]}); it looks like {looks}: {advice}")


def _check_architecture(parsed: ParsedLora, file_name: str, part: ModelPart, found: _Resolution, looks: str,
                        advice: str) -> None:
    """A diffusion-model LoRA of another architecture (names or cross-attention width) is refused."""
    if part.context_dim:
        widths = context_widths(parsed)
        if widths and part.context_dim not in widths:
            raise LoraMismatch(f"LoRA {file_name} was made for cross-attention width {sorted(widths)[0]} (it looks "
                               f"like {looks}); the model is {part.label} (width {part.context_dim}): {advice}")
    kind = lora_kind(parsed.adapters)
    if not kind_fits(kind, part.kind):
        considered = found.matched + len(found.unmatched) + len(found.mismatched)
        example = next((name for name in parsed.adapters if target_kind(name) == kind), "")
        raise LoraMismatch(f"LoRA {file_name}: {found.matched} of its {considered} targets for the {part.label} "
                           f"match a weight; its names are {KIND_LABELS[str(kind)]}'s (e.g. {example}), so it looks "
                           f"like {looks}: {advice}")
