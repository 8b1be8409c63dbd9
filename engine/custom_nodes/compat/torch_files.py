"""``comfy.utils.load_torch_file`` and ``save_torch_file``: model files for packs, never unpickling code.

``.safetensors`` (and ``.sft``) files are read with the safetensors library, which holds only tensors and
text metadata. Every other file is a pickle and goes through ``torch.load(weights_only=True)`` only, whatever
``safe_load`` says: a pickle that needs arbitrary classes is refused with
:class:`engine.models.loaders.UnsupportedModel`, never run. As in ComfyUI, a ``state_dict`` entry is unwrapped,
and so is a lone top-level entry holding a dict (``{"params_ema": {...}}``); nested dicts, lists and numbers that
weights-only unpickling allows are kept.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from engine.models.loaders import UnsupportedModel

__all__ = ["load_torch_file", "save_torch_file"]

log = logging.getLogger(__name__)

_SAFETENSORS_ENDINGS = (".safetensors", ".sft")


def _device_name(device: torch.device | str | None) -> str:
    return "cpu" if device is None else str(torch.device(device))


def _read_safetensors(path: str, device: str) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    with safetensors.safe_open(path, framework="pt", device=device) as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        return tensors, handle.metadata()


def _refusal(path: str, exc: Exception) -> UnsupportedModel:
    """Why a pickle was refused, without torch's advice to load it unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported (?:global|operand)[^\n.;]*", text)
    reason = found.group(0).strip() if found else type(exc).__name__
    return UnsupportedModel(
        f"{Path(path).name} was refused: pickled model files are read with weights_only=True only, and this one "
        f"needs more ({reason}); use a .safetensors version of the file")


def _read_pickle(path: str, device: str) -> Any:
    try:
        try:
            return torch.load(path, map_location=device, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            return torch.load(path, map_location=device, weights_only=True)  # legacy (non-zip) file
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None


def _unwrap(data: Any) -> Any:
    """ComfyUI's unwrapping: ``data["state_dict"]``, or the one value of a one-entry dict when it is a dict."""
    if not isinstance(data, dict):
        return data
    if "state_dict" in data:
        return data["state_dict"]
    if len(data) == 1:
        only = next(iter(data.values()))
        if isinstance(only, dict):
            return only
    return data


def load_torch_file(ckpt: str | os.PathLike[str], safe_load: bool = False, device: torch.device | str | None = None,
                    return_metadata: bool = False) -> Any:
    """A model file's state dict (and its safetensors metadata, or None, when ``return_metadata``).

    ``safe_load`` is accepted and ignored: Loom always loads safely.
    """
    path = os.fspath(ckpt)
    where = _device_name(device)
    metadata: dict[str, str] | None = None
    if path.lower().endswith(_SAFETENSORS_ENDINGS):
        state, metadata = _read_safetensors(path, where)
    else:
        if not safe_load:
            log.debug("custom nodes: %s loaded with weights_only=True although the pack did not ask", path)
        state = _unwrap(_read_pickle(path, where))
    return (state, metadata) if return_metadata else state


def save_torch_file(sd: dict[str, torch.Tensor], ckpt: str | os.PathLike[str],
                    metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as a ``.safetensors`` file (tensors made contiguous), with optional text metadata."""
    tensors = {key: value.contiguous() for key, value in sd.items()}
    safetensors.torch.save_file(tensors, os.fspath(ckpt), metadata=metadata)
