"""Which model a CONTROL_NET handle's file holds, and loading it: a T2I-Adapter (told by its keys, as
ComfyUI's ControlNetLoader does), an SD3/Flux ControlNet (:mod:`engine.models.flow_controlnet_load`), a
difference ControlNet over the handle's ``base`` model (DiffControlNetLoader), or a ControlNet
(:mod:`engine.models.controlnet_convert`)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.t2i_adapter import T2IAdapter
from engine.models.controlnet_convert import controlnet_names, load_controlnet, read_controlnet
from engine.models.diff_controlnet import DIFFERENCE_KEY, load_diff_controlnet
from engine.models.flow_controlnet_load import FlowControlNet, describe_flow_controlnet, load_flow_controlnet
from engine.models.handles import ControlNetHandle
from engine.models.loaders import CheckpointFile, UnsupportedModel
from engine.models.t2i_adapter_load import is_t2i_adapter, load_t2i_adapter, read_t2i_adapter

__all__ = ["cache_part", "describe_control_file", "load_control_model"]


def _is_adapter(path: Path) -> bool:
    with CheckpointFile(path) as ckpt:
        return is_t2i_adapter(ckpt.keys())


def describe_control_file(path: Path, *, difference_ok: bool = False) -> str:
    """What the ControlNet-folder file at ``path`` holds; UnsupportedModel naming the file when it is none
    (or when it is a difference ControlNet and ``difference_ok`` is False: those need DiffControlNetLoader)."""
    with CheckpointFile(path) as ckpt:
        keys = ckpt.keys()
        if is_t2i_adapter(keys):
            return read_t2i_adapter(ckpt)[0].describe()
        flow = describe_flow_controlnet(ckpt)  # SD3 / Flux ControlNets (engine/models/flow_controlnet_load.py)
        if flow is not None:
            return flow
        if DIFFERENCE_KEY not in keys:
            return read_controlnet(ckpt)[0].describe()
        if not difference_ok:
            raise UnsupportedModel(f"{path.name} is a 'difference' ControlNet (its weights are relative to a base "
                                   "model): load it with DiffControlNetLoader (Load ControlNet Model (diff)), "
                                   "giving it the model it was made from")
        names = controlnet_names([k for k in keys if k != DIFFERENCE_KEY], path.name)
        shapes = {ldm: tuple(ckpt.shape(key)) for ldm, key in names.items()}
        try:
            return "a difference " + ControlNetConfig.from_state_dict(shapes).describe().removeprefix("a ")
        except (ValueError, KeyError, IndexError) as exc:
            raise UnsupportedModel(f"{path.name}: ControlNet weights of an unknown structure ({exc})") from exc


def cache_part(handle: ControlNetHandle) -> str:
    """The model manager's part name for ``handle`` (a difference ControlNet differs per base model)."""
    base = handle.base
    if base is None:
        return "controlnet"
    return f"controlnet-diff:{base.checkpoint.path}:{base.unet_layout.prefix}:{base.unet_layout.naming}"


def _is_flow_controlnet(path: Path) -> bool:
    with CheckpointFile(path) as ckpt:
        return describe_flow_controlnet(ckpt) is not None


def load_control_model(handle: ControlNetHandle, *, device: torch.device,
                       dtype: torch.dtype) -> ControlNet | T2IAdapter | FlowControlNet:
    """The ControlNet (SD or SD3/Flux) or T2I-Adapter of ``handle``'s file, on ``device`` in ``dtype``."""
    path = Path(handle.file.path)
    if _is_adapter(path):
        return load_t2i_adapter(path, device=device, dtype=dtype)
    if _is_flow_controlnet(path):  # DiffControlNetLoader too loads full SD3/Flux ControlNets as they are
        return load_flow_controlnet(path, device=device, dtype=dtype)
    base = handle.base
    if base is not None:
        return load_diff_controlnet(path, base.checkpoint.path, base.unet_layout, device=device, dtype=dtype)
    return load_controlnet(path, device=device, dtype=dtype)
