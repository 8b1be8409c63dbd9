"""Which model a CONTROL_NET handle's file holds, and loading it: a T2I-Adapter (told by its keys, as
ComfyUI's ControlNetLoader does), a difference ControlNet over the handle's ``base`` model
(DiffControlNetLoader), or a ControlNet (:mod:`engine.models.controlnet_convert`)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.backend.controlnet import ControlNet
from engine.backend.t2i_adapter import T2IAdapter
from engine.models.controlnet_convert import load_controlnet, read_controlnet
from engine.models.diff_controlnet import load_diff_controlnet
from engine.models.handles import ControlNetHandle
from engine.models.loaders import CheckpointFile
from engine.models.t2i_adapter_load import is_t2i_adapter, load_t2i_adapter, read_t2i_adapter

__all__ = ["cache_part", "describe_control_file", "load_control_model"]


def _is_adapter(path: Path) -> bool:
    with CheckpointFile(path) as ckpt:
        return is_t2i_adapter(ckpt.keys())


def describe_control_file(path: Path) -> str:
    """What the ControlNet-folder file at ``path`` holds; UnsupportedModel naming the file when it is none."""
    with CheckpointFile(path) as ckpt:
        if is_t2i_adapter(ckpt.keys()):
            return read_t2i_adapter(ckpt)[0].describe()
        return read_controlnet(ckpt)[0].describe()


def cache_part(handle: ControlNetHandle) -> str:
    """The model manager's part name for ``handle`` (a difference ControlNet differs per base model)."""
    base = handle.base
    if base is None:
        return "controlnet"
    return f"controlnet-diff:{base.checkpoint.path}:{base.unet_layout.prefix}:{base.unet_layout.naming}"


def load_control_model(handle: ControlNetHandle, *, device: torch.device,
                       dtype: torch.dtype) -> ControlNet | T2IAdapter:
    """The ControlNet or T2I-Adapter of ``handle``'s file, on ``device`` in ``dtype``."""
    path = Path(handle.file.path)
    if _is_adapter(path):
        return load_t2i_adapter(path, device=device, dtype=dtype)
    base = handle.base
    if base is not None:
        return load_diff_controlnet(path, base.checkpoint.path, base.unet_layout, device=device, dtype=dtype)
    return load_controlnet(path, device=device, dtype=dtype)
