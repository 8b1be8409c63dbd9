"""What model a LoRA file was made for, read off its target names and shapes (for clear mismatch errors).

Target names tell the architecture apart whatever tool wrote them: UNet blocks (``down_blocks`` /
``input_blocks`` / ``mid_block`` ...), Flux.1 blocks (``double_blocks``, ``single_blocks``,
``single_transformer_blocks``), SD3 blocks (``joint_blocks``, and SD3.5 medium's ``attn2`` in diffusers'
top-level ``transformer_blocks``). diffusers' top-level ``transformer_blocks`` alone fit SD3 and Flux
alike ("dit"). Widths then name the family: a UNet's cross-attention width (768 SD1.x, 1024 SD2.x,
2048 SDXL, 1280 SDXL refiner), a transformer's hidden width (3072 Flux.1, 1536 SD3 medium / SD3.5 medium,
2432 SD3.5 large).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from engine.models.lora_formats import ParsedLora
from engine.models.lora_keys import SECOND_TOWER_PREFIXES, is_text_key

__all__ = ["KIND_LABELS", "context_widths", "kind_fits", "lora_kind", "looks_like", "target_kind"]

#: Cross-attention context widths of the UNet families.
_CONTEXT_FAMILIES = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "SDXL refiner"}
#: Hidden widths of the flow transformers.
_HIDDEN_FAMILIES = {3072: "Flux.1", 1536: "SD3 medium / SD3.5 medium", 2432: "SD3.5 large"}
#: What each architecture kind is called in messages.
KIND_LABELS = {"unet": "a UNet (SD1.x / SD2.x / SDXL)", "flux": "Flux.1", "sd3": "SD3 / SD3.5",
               "dit": "SD3 / SD3.5 or Flux.1"}

_PREFIX = r"^(?:lora_transformer_|lora_unet_|lycoris_|transformer\.|base_model\.model\.|(?:model\.)?diffusion_model\.)?"
_UNET = re.compile(r"(?:^|[._])(?:down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)(?:[._]|$)")
_FLUX = re.compile(r"(?:^|[._])(?:double_blocks|single_blocks|single_transformer_blocks)[._]\d")
_SD3 = re.compile(r"(?:^|[._])joint_blocks[._]\d")
_DIT = re.compile(_PREFIX + r"transformer_blocks[._]\d+[._]")
_DIT_ATTN2 = re.compile(_PREFIX + r"transformer_blocks[._]\d+[._]attn2[._]")
_HIDDEN_INPUT = re.compile(r"(?:qkv|to_q|to_k|to_v|add_[qkv]_proj|linear1|proj_mlp)$")


def target_kind(name: str) -> str | None:
    """"unet" | "flux" | "sd3" | "dit" (SD3 or Flux) for a LoRA target name, None when the name does not say."""
    if _FLUX.search(name):
        return "flux"
    if _SD3.search(name) or _DIT_ATTN2.search(name):
        return "sd3"
    if _DIT.search(name):
        return "dit"
    if _UNET.search(name):
        return "unet"
    return None


def lora_kind(names: Iterable[str]) -> str | None:
    """The architecture most of the (non-text) target names are for; "dit" when they fit SD3 and Flux alike."""
    counts = Counter(kind for name in names if not is_text_key(name) and (kind := target_kind(name)))
    if not counts:
        return None
    flow = counts["flux"] + counts["sd3"] + counts["dit"]
    if counts["unet"] >= flow:
        return "unet"
    if counts["flux"] != counts["sd3"]:
        return "flux" if counts["flux"] > counts["sd3"] else "sd3"
    return "dit"


def kind_fits(lora: str | None, model: str) -> bool:
    """Whether a LoRA of kind ``lora`` (None: unknown) can be meant for a model part of kind ``model``."""
    if lora is None or lora == model:
        return True
    return lora == "dit" and model in ("flux", "sd3")


def context_widths(parsed: ParsedLora) -> set[int]:
    """Input widths of a UNet LoRA's cross-attention key projections (= its model's context width)."""
    widths = set()
    for name, adapters in parsed.adapters.items():
        adapter = adapters.get("weight")
        if adapter is None or is_text_key(name) or target_kind(name) != "unet":
            continue
        if "attn2" in name and name.endswith("to_k"):
            shape = adapter.delta_shape()
            if len(shape) == 2:
                widths.add(shape[1])
    return widths


def _hidden_widths(parsed: ParsedLora) -> set[int]:
    """Input widths of a transformer LoRA's attention projections (= its model's hidden width)."""
    widths = set()
    for name, adapters in parsed.adapters.items():
        adapter = adapters.get("weight")
        if adapter is not None and not is_text_key(name) and _HIDDEN_INPUT.search(name):
            shape = adapter.delta_shape()
            if len(shape) == 2:
                widths.add(shape[1])
    return widths


def _flow_families(parsed: ParsedLora, kind: str) -> set[str]:
    known = {_HIDDEN_FAMILIES[width] for width in _hidden_widths(parsed) if width in _HIDDEN_FAMILIES}
    if kind == "flux":
        return {"Flux.1"}
    if kind == "sd3":
        known.discard("Flux.1")
        if any(_DIT_ATTN2.search(name) for name in parsed.adapters):
            return {"SD3.5 medium"}
    return known or {KIND_LABELS[kind]}


def looks_like(parsed: ParsedLora) -> str:
    """A guess at the family a LoRA was made for, for error messages ("a LoRA for SDXL")."""
    kind = lora_kind(parsed.adapters)
    if kind in ("flux", "sd3", "dit"):
        return "a LoRA for " + " / ".join(sorted(_flow_families(parsed, kind)))
    families = {_CONTEXT_FAMILIES.get(width, f"a model with context width {width}")
                for width in context_widths(parsed)}
    if not families and any(name.startswith(SECOND_TOWER_PREFIXES) for name in parsed.adapters):
        families = {"SDXL"}
    if not families:
        return "a LoRA for another model"
    return "a LoRA for " + " / ".join(sorted(families))
