"""Model parts in the standard single-file layouts, as :class:`TensorEntry` lists for the safetensors writer.

* a checkpoint (CheckpointSave): the UNet under ``model.diffusion_model.``, the text encoder(s) where the
  family's checkpoints keep them (SD1 ``cond_stage_model.transformer.`` in transformers' layout; SD2
  ``cond_stage_model.model.`` and SDXL's ``conditioner.embedders.N.model.`` in OpenCLIP's, q/k/v fused), the
  VAE under ``first_stage_model.``; an empty ``v_pred`` tensor marks a v-prediction model (the key Loom's and
  ComfyUI's loaders read);
* a UNet file (ModelSave): the UNet under ``model.diffusion_model.``; a VAE file (VAESave): bare VAE keys;
* text-encoder files (CLIPSave): one file per tower in transformers' layout (``text_model.*``), named by
  the tower (``clip_l``, ``clip_g``, ``clip_h``), as CLIPLoader and DualCLIPLoader read them.

Every entry reads its tensor from the module when the writer asks for it (the modules are the ones the model
manager built: merges and LoRA patches included), floating tensors in the chosen dtype (fp16 by default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from engine.backend.text import FAMILY_LAYOUTS, TextEncoder, checkpoint_tensors
from engine.models.families import ModelFamily
from engine.models.safetensors_writer import TensorEntry

__all__ = ["SAVE_DTYPES", "checkpoint_metadata", "module_entries", "text_entries", "text_file_entries",
           "v_prediction_entry"]

#: The dtype choices of the saving nodes.
SAVE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

_ARCHITECTURES = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base",
                  "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}


def _stored(tensor: Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if tensor.is_floating_point() else tensor.dtype


def _getter(tensor: Tensor) -> Callable[[], Tensor]:
    return lambda: tensor.detach()


def module_entries(module: nn.Module, prefix: str, dtype: torch.dtype) -> list[TensorEntry]:
    """Every tensor of ``module``'s state dict under ``prefix`` (floating ones stored as ``dtype``)."""
    return [TensorEntry(prefix + name, tuple(tensor.shape), _stored(tensor, dtype), _getter(tensor))
            for name, tensor in module.state_dict().items()]


def _tower_entries(encoder: TextEncoder, tower_key: str, prefix: str, openclip: bool,
                   dtype: torch.dtype) -> list[TensorEntry]:
    tower = encoder.towers[tower_key]
    entries = []
    model = tower.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"text encoder tower {tower_key} holds no model")
    for key, shape, make in checkpoint_tensors(model, openclip):
        stored = torch.int64 if key.endswith("position_ids") else dtype
        entries.append(TensorEntry(prefix + key, shape, stored, make))
    return entries


def text_entries(encoder: TextEncoder, dtype: torch.dtype) -> list[TensorEntry]:
    """The text encoder(s) where the family's checkpoints keep them, in their layouts."""
    entries = []
    for layout in FAMILY_LAYOUTS[encoder.family]:
        openclip = not layout.prefix.endswith("transformer.")
        entries += _tower_entries(encoder, layout.spec.key, layout.prefix, openclip, dtype)
    return entries


def text_file_entries(encoder: TextEncoder, dtype: torch.dtype) -> dict[str, list[TensorEntry]]:
    """One transformers-layout file's entries per tower, by tower name (``clip_l``, ``clip_g``, ``clip_h``)."""
    return {layout.spec.key: _tower_entries(encoder, layout.spec.key, "", False, dtype)
            for layout in FAMILY_LAYOUTS[encoder.family]}


def v_prediction_entry() -> TensorEntry:
    """The empty ``v_pred`` marker of v-prediction checkpoints."""
    return TensorEntry("v_pred", (0,), torch.float32, lambda: torch.zeros(0))


def checkpoint_metadata(family: ModelFamily, title: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The model-spec metadata of a saved model (architecture, title), plus ``extra`` strings."""
    architecture = _ARCHITECTURES.get(family.name, family.name)
    if family.name == "sd2" and family.prediction == "v":
        architecture = "stable-diffusion-v2-768-v"
    metadata = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
                "modelspec.implementation": "sgm" if family.is_sdxl else "ldm", "modelspec.title": title,
                "modelspec.prediction_type": "v" if family.prediction == "v" else "epsilon"}
    if family.is_inpaint:
        metadata["modelspec.architecture"] += "/inpainting"
    return {**metadata, **{key: str(value) for key, value in (extra or {}).items()}}

