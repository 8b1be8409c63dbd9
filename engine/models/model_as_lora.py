"""Another checkpoint's weights used as a LoRA (CreateHookModelAsLora): the plan the patcher applies.

Each weight of the part being patched (a UNet or a text encoder) that the checkpoint has in the same shape
becomes a :class:`~engine.models.lora_formats.ModelDiffAdapter`: at strength ``s`` the weight moves ``s`` of the
way from its original to the checkpoint's (``original + s * (target - original)``, ComfyUI's model_as_lora).
The target tensors are read once, kept in the file's dtype and widened when applied.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from engine.backend.text import FAMILY_LAYOUTS, load_text_encoder
from engine.errors import ModelError
from engine.models.handles import FileRef
from engine.models.loaders import CheckpointFile, UnsupportedModel
from engine.models.lora_formats import Adapter, ModelDiffAdapter
from engine.models.lora_plan import ModelPart, PatchPlan
from engine.models.parts import find_unet_layout, unet_keys

__all__ = ["model_plan"]

log = logging.getLogger(__name__)

_TEXT_PREFIXES = tuple(sorted({layout.prefix for layouts in FAMILY_LAYOUTS.values() for layout in layouts}))


def _targets(path: Path, text: bool) -> dict[str, Tensor]:
    with CheckpointFile(path) as ckpt:
        if not text:
            return {name: ckpt.load(key) for name, key in unet_keys(ckpt, find_unet_layout(ckpt)).items()}
        state = {key: ckpt.load(key, torch.float32) for key in ckpt.keys() if key.startswith(_TEXT_PREFIXES)}
    if not state:
        return {}
    encoder = load_text_encoder(state)
    return {name: param.detach() for name, param in encoder.named_parameters()}


def model_plan(ref: FileRef, part: ModelPart) -> PatchPlan:
    """The weights of the checkpoint ``ref`` that ``part`` has, as adapters toward them."""
    try:
        targets = _targets(Path(ref.path), part.text)
    except (UnsupportedModel, ValueError) as exc:
        raise ModelError(f"{ref.name} cannot be used as a LoRA of the {part.label}: {exc}") from exc
    adapters: dict[str, Adapter] = {}
    skipped = []
    for name, shape in part.shapes.items():
        target = targets.get(name)
        if target is None or tuple(target.shape) != shape:
            skipped.append(name)
            continue
        adapters[name] = ModelDiffAdapter(target)
    if not adapters:
        raise ModelError(f"{ref.name} has no weights of the {part.label} (another model family?); pick a checkpoint "
                         "of the same family for CreateHookModelAsLora")
    if skipped:
        log.warning("%s used as a LoRA: %d of the %s's weights are missing there or shaped otherwise and stay as "
                    "they are (e.g. %s)", ref.name, len(skipped), part.label, ", ".join(skipped[:3]))
    return PatchPlan(ref.name, adapters)
