"""Torch-backed SDK: extracting a LoRA from difference models and writing it (LoraSave).

A node imports this module inside ``run`` (``from engine.sdk import model_files``), never at module level, so
registering nodes does not load torch. It offers:

* :func:`extract_lora`: the safetensors entries of a LoRA made from a difference MODEL and/or CLIP (see
  engine/models/lora_extract.py), computed one weight at a time as the file is written;
* :func:`write_safetensors`: the writer (a new counted name, never replacing a file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from engine.backend.unet import UNetModel
from engine.errors import ModelError
from engine.models.handles import ClipHandle, ModelHandle
from engine.models.lora_extract import LORA_TYPES, DiffPart, changed_unnamed, lora_entries, text_part, unet_part
from engine.models.safetensors_writer import TensorEntry, write_safetensors
from engine.providers import ModelProvider

__all__ = ["LORA_TYPES", "LoraExtraction", "TensorEntry", "extract_lora", "write_safetensors"]


@dataclass(frozen=True)
class LoraExtraction:
    """A LoRA ready to write, and per part ("UNet", "text encoder") the changed weights it cannot carry."""

    entries: list[TensorEntry]
    left_out: dict[str, list[str]] = field(default_factory=dict)


def extract_lora(models: ModelProvider, model_diff: ModelHandle | None, text_encoder_diff: ClipHandle | None, *,
                 rank: int, lora_type: str, bias_diff: bool, dtype: torch.dtype = torch.float16) -> LoraExtraction:
    """The LoRA of the difference UNet (``model_diff``) and/or text encoder (``text_encoder_diff``).

    Each weight is read from the model provider again when the writer reaches it, so the module is placed and
    patched as its handle says even if another part was asked for in between.
    """
    parts: list[DiffPart] = []
    if model_diff is not None:
        unet = models.unet(model_diff)
        if not isinstance(unet, UNetModel):
            raise ModelError(f"LoraSave: extracting LoRAs from {model_diff.family.label} models is not supported yet; "
                             "use SD1.x/SD2.x/SDXL models")
        parts.append(unet_part(unet, _reader(lambda: models.unet(model_diff))))
    if text_encoder_diff is not None:
        encoder = models.text_encoder(text_encoder_diff)
        parts.append(text_part(encoder, _reader(lambda: models.text_encoder(text_encoder_diff))))
    entries: list[TensorEntry] = []
    left_out: dict[str, list[str]] = {}
    for part in parts:
        entries.extend(lora_entries(part, rank, lora_type, bias_diff, dtype))
        changed = changed_unnamed(part)
        if changed:
            left_out[part.label] = changed
    return LoraExtraction(entries, left_out)


def _reader(module: Callable[[], nn.Module]) -> Callable[[str], Tensor]:
    def read(param: str) -> Tensor:
        return module().get_parameter(param).detach()
    return read
