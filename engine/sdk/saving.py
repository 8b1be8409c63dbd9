"""Torch-backed SDK: saving MODEL, CLIP and VAE values as model files (CheckpointSave, ModelSave, CLIPSave,
VAESave). A node imports this module inside ``run``.

The modules come from the model provider (merges and LoRA patches as the graph made them) and are written
tensor by tensor in the standard layouts (engine/models/checkpoint_export.py) by the safetensors writer:
atomically, under a free counted name, never over a file. The prompt and workflow go into the file's
metadata only when the node asks (``include_workflow``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.context import RunContext
from engine.files import next_counter
from engine.models.checkpoint_export import (
    SAVE_DTYPES,
    checkpoint_metadata,
    module_entries,
    text_entries,
    text_file_entries,
    v_prediction_entry,
)
from engine.models.families import ModelFamily
from engine.models.handles import ClipHandle, ModelHandle, VaeHandle
from engine.models.loaders import UNET_PREFIX, VAE_PREFIX
from engine.models.safetensors_writer import TensorEntry, write_safetensors

__all__ = ["SAVE_DTYPES", "counted_path", "save_checkpoint", "save_clip", "save_unet", "save_vae"]

SUFFIX = ".safetensors"


def _metadata(ctx: RunContext, family: ModelFamily | None, title: str, include_workflow: bool) -> dict[str, str]:
    extra: dict[str, Any] = {}
    if include_workflow:
        if ctx.prompt:
            extra["prompt"] = json.dumps(ctx.prompt)
        for key, value in (ctx.extra_pnginfo or {}).items():
            extra[key] = json.dumps(value)
    if family is None:
        return {key: str(value) for key, value in extra.items()}
    return checkpoint_metadata(family, title, extra)


def _samples_v(model: ModelHandle) -> bool:
    spec = model.sampling
    if spec is not None:
        return spec.prediction == "v_prediction"
    return model.family.prediction == "v"


def _write(ctx: RunContext, path: Path, entries: Sequence[TensorEntry], metadata: dict[str, str]) -> Path:
    written = write_safetensors(path, entries, metadata, check=ctx.check_interrupted)
    size = sum(entry.nbytes for entry in entries)
    ctx.log.info("saved %s (%d tensors, %.1f MiB)", written, len(entries), size / 2**20)
    return written


def _unet_entries(ctx: RunContext, model: ModelHandle, dtype_name: str) -> list[TensorEntry]:
    entries = module_entries(ctx.models.unet(model), UNET_PREFIX, SAVE_DTYPES[dtype_name])
    return [*entries, v_prediction_entry()] if _samples_v(model) else entries


def counted_path(directory: Path, name: str) -> Path:
    """``{name}_{counter:05}_.safetensors`` with the counter after the highest one in ``directory``."""
    return directory / f"{name}_{next_counter(directory, name):05}_{SUFFIX}"


def save_checkpoint(ctx: RunContext, directory: Path, name: str, model: ModelHandle, clip: ClipHandle,
                    vae: VaeHandle, dtype_name: str = "fp16", include_workflow: bool = False) -> Path:
    """One checkpoint file: UNet, text encoder(s) and VAE in the single-file layout."""
    dtype = SAVE_DTYPES[dtype_name]
    entries = _unet_entries(ctx, model, dtype_name)
    entries += text_entries(ctx.models.text_encoder(clip), dtype)
    entries += module_entries(ctx.models.vae(vae), VAE_PREFIX, dtype)
    path = counted_path(directory, name)
    return _write(ctx, path, entries, _metadata(ctx, model.family, path.stem, include_workflow))


def save_unet(ctx: RunContext, directory: Path, name: str, model: ModelHandle, dtype_name: str = "fp16",
              include_workflow: bool = False) -> Path:
    """The diffusion model alone (a UNETLoader file with the checkpoint's prefix)."""
    path = counted_path(directory, name)
    return _write(ctx, path, _unet_entries(ctx, model, dtype_name),
                  _metadata(ctx, model.family, path.stem, include_workflow))


def save_clip(ctx: RunContext, directory: Path, name: str, clip: ClipHandle, dtype_name: str = "fp16",
              include_workflow: bool = False) -> list[Path]:
    """One transformers-layout file per text encoder tower, ``{name}_{tower}_00001_`` (ComfyUI's naming), for
    CLIPLoader / DualCLIPLoader."""
    written = []
    for tower, entries in text_file_entries(ctx.models.text_encoder(clip), SAVE_DTYPES[dtype_name]).items():
        path = counted_path(directory, f"{name}_{tower}")
        written.append(_write(ctx, path, entries, _metadata(ctx, None, path.stem, include_workflow)))
    return written


def save_vae(ctx: RunContext, directory: Path, name: str, vae: VaeHandle, dtype_name: str = "fp16",
             include_workflow: bool = False) -> Path:
    """The VAE alone, with bare keys (a VAELoader file)."""
    path = counted_path(directory, name)
    entries = module_entries(ctx.models.vae(vae), "", SAVE_DTYPES[dtype_name])
    return _write(ctx, path, entries, _metadata(ctx, None, path.stem, include_workflow))
