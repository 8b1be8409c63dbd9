"""``comfy.utils``: the helpers packs import most, onto Loom's engine.

Progress (:class:`ProgressBar`, reporting to the node running now), resampling with ComfyUI's upscale methods
(:func:`common_upscale`, through :mod:`engine.backend.resample`), model files (:func:`load_torch_file` never
unpickles code; :func:`save_torch_file` writes safetensors), tiling (:func:`tiled_scale`) and small state-dict
and attribute helpers. Written from ComfyUI's interface, not its code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.backend import resample
from engine.custom_nodes.compat.progress_bar import ProgressBar
from engine.custom_nodes.compat.tiles import get_tiled_scale_steps, tiled_scale
from engine.custom_nodes.compat.torch_files import load_torch_file, save_torch_file

__all__ = [
    "PROGRESS_BAR_ENABLED", "ProgressBar", "bislerp", "common_upscale", "get_attr", "get_tiled_scale_steps",
    "lanczos", "load_torch_file", "repeat_to_batch_size", "save_torch_file", "set_attr", "set_attr_param",
    "set_progress_bar_enabled", "state_dict_prefix_replace", "tiled_scale",
]

#: Whether progress bars report (always: Loom sends progress events to clients, it draws no console bars).
PROGRESS_BAR_ENABLED = True


def set_progress_bar_enabled(enabled: bool) -> None:
    """Accepted for packs that call it; Loom's progress events do not depend on it."""
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def common_upscale(samples: Tensor, width: int, height: int, upscale_method: str, crop: str) -> Tensor:
    """Resample ``[B, C, H, W]`` (or ``[B, C, T, H, W]``, frame by frame) to ``height x width``.

    Methods: nearest-exact, bilinear, area, bicubic, lanczos, bislerp; ``crop`` disabled or center.
    """
    if samples.ndim <= 4:
        return resample.resize(samples, width, height, upscale_method, crop)
    batch, channels = samples.shape[:2]
    frames = samples.reshape(batch, channels, -1, *samples.shape[-2:]).movedim(2, 1)
    count = frames.shape[1]
    flat = frames.reshape(batch * count, channels, *samples.shape[-2:])
    out = resample.resize(flat, width, height, upscale_method, crop)
    out = out.reshape(batch, count, channels, height, width).movedim(1, 2)
    return out.reshape(batch, channels, *samples.shape[2:-2], height, width)


def lanczos(samples: Tensor, width: int, height: int) -> Tensor:
    """Lanczos resampling of ``[B, C, H, W]``."""
    return resample.lanczos(samples, width, height)


def bislerp(samples: Tensor, width: int, height: int) -> Tensor:
    """Slerp-based resampling of ``[B, C, H, W]`` latents (vectors keep their length)."""
    return resample.bislerp(samples, width, height)


def repeat_to_batch_size(tensor: Tensor, batch_size: int, dim: int = 0) -> Tensor:
    """``tensor`` cut or repeated along ``dim`` to ``batch_size`` items."""
    size = tensor.shape[dim]
    if size > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if size < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = -(-batch_size // size)
        return tensor.repeat(*repeats).narrow(dim, 0, batch_size)
    return tensor


def state_dict_prefix_replace(state_dict: dict[str, Any], replace_prefix: dict[str, str],
                              filter_keys: bool = False) -> dict[str, Any]:
    """Keys starting with each ``old`` prefix renamed to start with ``new``; ``filter_keys`` keeps only those
    (a new dict), otherwise ``state_dict`` is changed in place and returned."""
    out: dict[str, Any] = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old):]] = state_dict.pop(key)
    return out


def get_attr(obj: Any, attr: str) -> Any:
    """``obj.a.b.c`` for ``attr="a.b.c"``."""
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj: Any, attr: str, value: Any) -> Any:
    """Set ``obj.a.b.c = value`` for ``attr="a.b.c"``; the value it replaced."""
    *parents, last = attr.split(".")
    for name in parents:
        obj = getattr(obj, name)
    previous = getattr(obj, last)
    setattr(obj, last, value)
    return previous


def set_attr_param(obj: Any, attr: str, value: Tensor) -> Any:
    """:func:`set_attr` with ``value`` wrapped as a frozen ``torch.nn.Parameter``."""
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))
