"""Weights stored in one dtype and computed in another, layer by layer (UNETLoader's fp8 weight_dtype).

A UNet loaded with ``weight_dtype`` fp8_e4m3fn or fp8_e5m2 keeps every parameter in float8: a quarter of
fp32's memory, half of fp16's. Its Linear, Conv2d, GroupNorm and LayerNorm layers become the casting
subclasses below (the class of each existing module is switched, so parameter names, ``named_parameters``,
LoRA patching and block streaming see exactly the stored float8 tensors). Reading ``layer.weight`` or
``layer.bias`` gives the stored tensor cast to the layer's ``compute_dtype``: the layers' own forwards and
code that reads the weights directly (``F.linear(x, layer.weight ...)``) both compute in that dtype, and
only one layer's weights exist in the compute dtype at a time.

Pure torch; the model manager (engine/models/manager.py) decides when to use it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FLOAT8_DTYPES", "FP8_ONLY_SUFFIXES", "WEIGHT_SCALE_SUFFIXES", "CastConv2d", "CastGroupNorm", "CastLayerNorm",
    "CastLinear", "cast_at_forward", "cast_parameters", "set_weight_scales",
]

#: UNETLoader's weight_dtype names of the float8 storage dtypes ("fp8_e4m3fn_fast" stores as fp8_e4m3fn).
FLOAT8_DTYPES: dict[str, torch.dtype] = {
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


class _CastWeights:
    """``weight`` and ``bias`` read as the stored parameters cast to ``compute_dtype``; a ``weight_scale`` buffer
    (the "scaled fp8" files: float8 weights with one float32 scale per layer or per output channel) multiplies
    the weight as it is read."""

    compute_dtype: torch.dtype = torch.float32
    _parameters: dict[str, Any]
    _buffers: dict[str, Any]

    @property
    def weight(self) -> Tensor:
        weight = self._parameters["weight"].to(self.compute_dtype)
        scale = self._buffers.get("weight_scale")
        if scale is None:
            return weight
        if scale.numel() > 1:  # one scale per output channel
            scale = scale.reshape(-1, *([1] * (weight.ndim - 1)))
        return weight * scale.to(self.compute_dtype)

    @property
    def bias(self) -> Tensor | None:
        stored = self._parameters.get("bias")
        return None if stored is None else stored.to(self.compute_dtype)


class CastLinear(_CastWeights, nn.Linear):  # type: ignore[misc,override,unused-ignore]
    """nn.Linear computing in ``compute_dtype`` from weights stored in another dtype."""


class CastConv2d(_CastWeights, nn.Conv2d):  # type: ignore[misc,override,unused-ignore]
    """nn.Conv2d computing in ``compute_dtype`` from weights stored in another dtype."""


class CastGroupNorm(_CastWeights, nn.GroupNorm):  # type: ignore[misc,override,unused-ignore]
    """nn.GroupNorm computing in ``compute_dtype`` from weights stored in another dtype."""


class CastLayerNorm(_CastWeights, nn.LayerNorm):  # type: ignore[misc,override,unused-ignore]
    """nn.LayerNorm computing in ``compute_dtype`` from weights stored in another dtype."""


_CASTING: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: CastLinear, nn.Conv2d: CastConv2d, nn.GroupNorm: CastGroupNorm, nn.LayerNorm: CastLayerNorm,
}


def cast_at_forward(model: nn.Module, compute_dtype: torch.dtype, *, strict: bool = True) -> int:
    """Make every Linear / Conv2d / GroupNorm / LayerNorm of ``model`` compute in ``compute_dtype`` whatever
    dtype its parameters are stored in; returns how many layers were switched.

    Call it before the weights are stored in the other dtype. ValueError when another kind of module holds
    parameters of its own (it could not compute from float8 weights), unless ``strict`` is False: then those
    modules are left as they are, and their weights must stay in the compute dtype (:func:`cast_parameters`
    names the ones that may be stored otherwise).
    """
    switched = 0
    for name, module in model.named_modules():
        casting = _CASTING.get(type(module))
        if casting is not None:
            module.__class__ = casting
            module.compute_dtype = compute_dtype
            switched += 1
        elif isinstance(module, _CastWeights):
            module.compute_dtype = compute_dtype
            switched += 1
        elif strict and any(p is not None for p in module._parameters.values()):
            raise ValueError(f"{name or type(model).__name__} ({type(module).__name__}) holds weights that cannot "
                             "be cast at forward time; keep this model's weights in the compute dtype")
    return switched


#: How scaled-fp8 files name a layer's weight scale: ComfyUI's first ``scaled_fp8`` files and the newer ones.
WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
#: Keys of scaled-fp8 files that only fp8 matrix multiplication reads (activation scales) or that mark the format.
FP8_ONLY_SUFFIXES = (".scale_input", ".input_scale", "scaled_fp8")


def set_weight_scales(model: nn.Module, scales: dict[str, Tensor]) -> None:
    """Give each casting layer named in ``scales`` (layer name -> float32 scale) its ``weight_scale`` buffer."""
    for name, scale in scales.items():
        module = model.get_submodule(name)
        if not isinstance(module, _CastWeights):
            raise ValueError(f"{name} has a weight scale but is not a layer that casts its weights "
                             f"({type(module).__name__})")
        module.register_buffer("weight_scale", scale.float(), persistent=False)


def cast_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters of ``model``'s casting layers: the ones that may be stored in another dtype."""
    return {f"{name}.{leaf}" if name else leaf for name, module in model.named_modules()
            if isinstance(module, _CastWeights) for leaf, value in module._parameters.items() if value is not None}
