"""How a diffusion model's weights are stored in RAM: the compute dtype, or float8 with each layer cast as it runs.

Float8 storage comes from UNETLoader's ``weight_dtype`` (fp8_e4m3fn, fp8_e5m2), or from the file itself: a file
whose layer weights are float8 (``flux1-dev-fp8``, the "scaled fp8" releases) keeps them in float8 as ComfyUI
does, instead of growing fourfold into fp32. Scaled-fp8 files carry a float32 scale per layer
(``X.scale_weight`` in ComfyUI's first format, ``X.weight_scale`` in the newer one): the layer's weight is
``float8 weight * scale`` (engine/backend/cast_weights.py reads it so). Activation scales (``scale_input`` /
``input_scale``) and the ``scaled_fp8`` marker only serve fp8 matrix multiplication and are not loaded.
Norm scales and position tables stay in the compute dtype (their layers do not cast).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor

from engine.backend.cast_weights import FP8_ONLY_SUFFIXES, WEIGHT_SCALE_SUFFIXES
from engine.models.loaders import CheckpointFile

__all__ = ["FLOAT8", "file_float8", "model_shapes", "split_scales", "stored_as"]

#: The float8 dtypes a file may store weights in.
FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _scale_or_marker(name: str) -> bool:
    return name.endswith(WEIGHT_SCALE_SUFFIXES) or name.endswith(FP8_ONLY_SUFFIXES)


def model_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shapes of the model's own tensors (scales and markers of scaled-fp8 files left out)."""
    return {name: shape for name, shape in shapes.items() if not _scale_or_marker(name)}


def file_float8(ckpt: CheckpointFile, keys: Mapping[str, str]) -> torch.dtype | None:
    """The float8 dtype the file stores layer weights in (``keys``: model name -> file key), or None; files that
    keep some layers (embedders, final layers) in 16 bits still count."""
    for name, key in keys.items():
        if name.endswith(".weight") and len(ckpt.shape(key)) >= 2 and ckpt.dtype(key) in FLOAT8:
            return ckpt.dtype(key)
    return None


def split_scales(tensors: Iterable[tuple[str, Tensor]], scales: dict[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
    """The model's tensors; each layer's weight scale goes into ``scales`` (layer name -> scale) on the way."""
    for name, tensor in tensors:
        for suffix in WEIGHT_SCALE_SUFFIXES:
            if name.endswith(suffix):
                scales[name[: -len(suffix)]] = tensor.float()
                break
        else:
            if not _scale_or_marker(name):
                yield name, tensor


def stored_as(tensors: Iterable[tuple[str, Tensor]], cast: set[str], storage: torch.dtype, dtype: torch.dtype,
              *, from_file: bool = False) -> Iterator[tuple[str, Tensor]]:
    """Floating tensors in ``storage`` where their layer casts at forward time (``cast``), else in ``dtype``.

    ``from_file``: the storage is the file's own float8, and only the tensors the file stores in float8 stay so
    (biases and the rest come in the compute dtype). A float8 tensor bound for the other float8 dtype is
    converted through float32 (no direct cast exists).
    """
    for name, tensor in tensors:
        if tensor.is_floating_point():
            in_float8 = name in cast and (not from_file or tensor.dtype in FLOAT8)
            target = storage if in_float8 else dtype
            if tensor.dtype != target and tensor.dtype in FLOAT8 and target in FLOAT8:
                tensor = tensor.float()
            tensor = tensor.to(target)
        yield name, tensor
