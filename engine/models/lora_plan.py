"""Resolving a parsed LoRA file against one loaded model part, and telling a LoRA of another family.

:func:`describe_part` summarises a loaded UNet or TextEncoder (its LoRA key names, parameter shapes,
cross-attention width, towers); :func:`build_plan` maps every adapter of a LoRA to the parameter it
changes and checks that it fits. Keys meant for this part (text-encoder keys for a TextEncoder,
the rest for a UNet) that match no weight, or a weight of another shape, are named in one warning.
A LoRA made for another family raises :class:`~engine.errors.LoraMismatch`: keys for SDXL's second
text encoder on a model with one, a cross-attention width other than the model's, or no (or mostly
wrong-shaped) matches. Nothing here touches weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from engine.backend.text import TextEncoder
from engine.backend.unet import UNetModel
from engine.errors import LoraMismatch
from engine.models.lora_formats import Adapter, ParsedLora, fits
from engine.models.lora_keys import SECOND_TOWER_PREFIXES, is_text_key, text_key_map, unet_key_map

__all__ = ["ModelPart", "PatchPlan", "build_plan", "describe_part"]

log = logging.getLogger(__name__)

#: Cross-attention context widths of the real families, to say what a LoRA was made for.
_CONTEXT_FAMILIES = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "SDXL refiner"}
_SHOWN_KEYS = 8


@dataclass(frozen=True)
class ModelPart:
    """What resolving a LoRA against one loaded module needs: names, shapes and the family's signature."""

    family: str  # the model's family label, e.g. "SD1.x"
    name: str  # "UNet" | "text encoder"
    text: bool  # a text encoder (takes lora_te* / text_encoder* keys) or a UNet (takes the rest)
    key_map: Mapping[str, str]  # LoRA target name -> module path
    shapes: Mapping[str, tuple[int, ...]]  # parameter name -> shape
    context_dim: int | None = None  # UNet cross-attention width
    towers: int = 0  # text encoders: how many towers

    @property
    def label(self) -> str:
        return f"{self.family} {self.name}"


def describe_part(module: nn.Module, family_label: str) -> ModelPart:
    """The :class:`ModelPart` of a loaded UNet or TextEncoder."""
    shapes = {name: tuple(param.shape) for name, param in module.named_parameters()}
    if isinstance(module, UNetModel):
        paths = [name for name, sub in module.named_modules() if name and any(True for _ in sub.parameters(False))]
        return ModelPart(family_label, "UNet", False, unet_key_map(paths, module.config), shapes,
                         context_dim=module.config.context_dim)
    if isinstance(module, TextEncoder):
        return ModelPart(family_label, "text encoder", True, text_key_map(module), shapes,
                         towers=len(module.towers))
    raise TypeError(f"LoRA patches apply to a UNet or a text encoder, not to {type(module).__name__}")


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


def build_plan(parsed: ParsedLora, file_name: str, part: ModelPart) -> PatchPlan:
    """Resolve a parsed LoRA against a model part; warn once about keys that were not used.

    Raises :class:`LoraMismatch` when the LoRA was made for another family: keys for a second text
    encoder the model lacks, a cross-attention width other than the model's, or no / mostly
    wrong-shaped matches among the keys meant for this part.
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
    for name, adapters in parsed.adapters.items():
        if is_text_key(name) != part.text:
            continue
        module = part.key_map.get(name)
        if module is None:
            found.unmatched.append(name)
            found.skipped.append(f"{name} (no such weight)")
            found.skipped_keys += len(parsed.keys[name])
            continue
        for leaf, adapter in adapters.items():
            param = f"{module}.{leaf}"
            shape = part.shapes.get(param)
            if shape is None or not fits(adapter, shape):
                what = f"{name} ({adapter.kind} {list(adapter.delta_shape())} vs weight {list(shape or ())})"
                found.mismatched.append(what)
                found.skipped.append(what)
                found.skipped_keys += len(parsed.keys[name]) if len(adapters) == 1 else 1
                continue
            found.targets[param] = adapter
    return found


def _check_family(parsed: ParsedLora, file_name: str, part: ModelPart, found: _Resolution) -> None:
    considered = len(found.targets) + len(found.unmatched) + len(found.mismatched)
    if not considered:
        return
    looks = _looks_like(parsed)
    advice = f"use a LoRA made for {part.family} models, or load a checkpoint of the LoRA's family"
    if part.text and part.towers < 2:
        second = [name for name in found.unmatched if name.startswith(SECOND_TOWER_PREFIXES)]
        if second:
            raise LoraMismatch(f"LoRA {file_name} has keys for SDXL's second text encoder (e.g. {second[0]}), so it "
                               f"looks like {looks}; the model is {part.label}: {advice}")
    if not part.text and part.context_dim:
        widths = _context_widths(parsed)
        if widths and part.context_dim not in widths:
            raise LoraMismatch(f"LoRA {file_name} was made for cross-attention width {sorted(widths)[0]} (it looks "
                               f"like {looks}); the model is {part.label} (width {part.context_dim}): {advice}")
    if not found.targets:
        sample = ", ".join((found.mismatched or found.unmatched)[:3])
        raise LoraMismatch(f"LoRA {file_name}: none of its {considered} targets for the {part.label} fit "
                           f"(e.g. {sample}); it looks like {looks}: {advice}")
    if len(found.mismatched) > len(found.targets):
        raise LoraMismatch(f"LoRA {file_name}: {len(found.mismatched)} of {considered} targets have other shapes than "
                           f"the {part.label}'s weights (e.g. {found.mismatched[0]}); it looks like {looks}: {advice}")


def _context_widths(parsed: ParsedLora) -> set[int]:
    """Input widths of the LoRA's cross-attention key projections (= its model's context width)."""
    widths = set()
    for name, adapters in parsed.adapters.items():
        adapter = adapters.get("weight")
        if adapter is not None and "attn2" in name and name.endswith("to_k") and not is_text_key(name):
            shape = adapter.delta_shape()
            if len(shape) == 2:
                widths.add(shape[1])
    return widths


def _looks_like(parsed: ParsedLora) -> str:
    """A guess at the family a LoRA was made for, for error messages."""
    families = {_CONTEXT_FAMILIES.get(width, f"a model with context width {width}")
                for width in _context_widths(parsed)}
    if not families and any(name.startswith(SECOND_TOWER_PREFIXES) for name in parsed.adapters):
        families = {"SDXL"}
    if not families:
        return "a LoRA for another model"
    return "a LoRA for " + " / ".join(sorted(families))
