"""Convolution and linear weights pre-packed for oneDNN, for fp32 inference on CPUs.

``F.conv2d`` on a CPU re-lays out its weight into oneDNN's blocked format on every call, and ``F.linear``
goes to MKL's sgemm; for a UNet step that costs a third of the time (the deep 3x3 convolutions on small
maps spend more on the reorder than on the arithmetic). :func:`pack_layers` does the reorder once: every
fp32 ``nn.Conv2d`` and ``nn.Linear`` of a model on the CPU becomes a :class:`PackedConv2d` /
:class:`PackedLinear` (the class of the existing module is switched, as engine/backend/cast_weights.py
does), whose forward calls oneDNN with the packed weight. The packed weight replaces the dense one: no
second copy is held. :func:`unpack_layers` reorders back; a reorder only moves values, so the dense weight
it gives back is the original bit for bit.

While a layer is packed:

* ``layer.weight`` reads the dense weight, rebuilt from the packed one (a temporary copy), so code that
  reads a layer's weight directly (a scaled projection, a Control-LoRA copying the UNet) still sees it;
* ``state_dict()`` holds the dense weight too (a state-dict hook), so saving a packed model saves its
  values;
* the ``weight`` *parameter* (``named_parameters()``, ``_parameters``) holds a meta tensor of the right
  shape and dtype: code that patches parameters in place (LoRA patching) must unpack first; the model
  manager does (engine/models/manager.py), and a reader that forgets fails loudly instead of reading
  stale values.

Outputs equal the unpacked layers' within float rounding (oneDNN and MKL sum in different orders: about
1e-7 relative). Inputs that are not fp32 CPU tensors, or that need gradients, take the dense path.

Pure torch; the model manager decides when to pack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PackedConv2d", "PackedLinear", "is_packed", "pack_layers", "packing_available", "unpack_layers"]

log = logging.getLogger(__name__)

_PACKED_WEIGHT = "packed_weight"
_HOOK = "_packed_state_hook"
_DENSE_PARAMETER = "_dense_parameter"


def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed convolution and linear operators."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    return all(hasattr(ops, name) for name in (
        "_reorder_convolution_weight", "_convolution_pointwise", "_reorder_linear_weight", "_linear_pointwise"))


class _Packed:
    """The shared part of the packed layers: the dense weight read back, the dense fallback test."""

    _parameters: dict[str, Any]
    __dict__: dict[str, Any]

    @property
    def weight(self) -> Tensor:
        """The dense weight, rebuilt from the packed one: a temporary copy with the parameter's shape, as a
        parameter that needs no gradient (so ``get_parameter`` finds it too)."""
        return nn.Parameter(_dense(self.__dict__[_PACKED_WEIGHT], self._parameters["weight"]), requires_grad=False)

    def _dense_path(self, x: Tensor) -> bool:
        """Inputs oneDNN's packed kernels do not take here: not fp32 on the CPU, or needing gradients."""
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return True
        bias = self._parameters.get("bias")
        return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


class PackedConv2d(_Packed, nn.Conv2d):  # type: ignore[misc,override,unused-ignore]
    """nn.Conv2d whose weight is held in oneDNN's blocked layout (see the module docstring). A pointwise
    conv (1x1, stride 1, no padding, one group) is packed as the linear layer it is: :meth:`project_tokens`
    applies it to ``[..., C]`` tokens (a transformer's projections), ``forward`` to ``[B, C, H, W]`` maps."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # an unbatched map, as nn.Conv2d takes it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if self._dense_path(x):
            return F.conv2d(x, self.weight, self._parameters.get("bias"), self.stride, self.padding,
                            self.dilation, self.groups)
        if _pointwise(self):
            return self.project_tokens(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.__dict__[_PACKED_WEIGHT], self._parameters.get("bias"), list(self.padding),
            list(self.stride), list(self.dilation), self.groups, "none", [], "")

    def project_tokens(self, tokens: Tensor) -> Tensor:
        """This pointwise conv on channels-last ``[..., C]`` tokens."""
        if not _pointwise(self):
            raise ValueError(f"project_tokens needs a 1x1 conv with stride 1 and no padding, not {self}")
        if self._dense_path(tokens):
            return F.linear(tokens, self.weight.flatten(1), self._parameters.get("bias"))
        return torch.ops.mkldnn._linear_pointwise(tokens, self.__dict__[_PACKED_WEIGHT], self._parameters.get("bias"),
                                                  "none", [], "")


def _pointwise(conv: nn.Conv2d) -> bool:
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (0, 0)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1)


class PackedLinear(_Packed, nn.Linear):  # type: ignore[misc,override,unused-ignore]
    """nn.Linear whose weight is held in oneDNN's inner-product layout (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if self._dense_path(x):
            return F.linear(x, self.weight, self._parameters.get("bias"))
        return torch.ops.mkldnn._linear_pointwise(x, self.__dict__[_PACKED_WEIGHT], self._parameters.get("bias"),
                                                  "none", [], "")


def _dense(packed: Tensor, parameter: Tensor) -> Tensor:
    return packed.to_dense().reshape(parameter.shape)


def _packable(module: nn.Module) -> bool:
    weight = module._parameters.get("weight")
    if weight is None or weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.is_meta:
        return False
    if "weight_scale" in module._buffers:
        return False
    if type(module) is nn.Conv2d:
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return type(module) is nn.Linear


def _pack_weight(module: nn.Module) -> Tensor:
    parameter = module._parameters["weight"]
    assert parameter is not None
    weight = parameter.detach()
    if isinstance(module, nn.Conv2d) and _pointwise(module):
        return torch.ops.mkldnn._reorder_linear_weight(weight.flatten(1))
    if isinstance(module, nn.Conv2d):
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(module.padding), list(module.stride), list(module.dilation), module.groups)
    return torch.ops.mkldnn._reorder_linear_weight(weight)


_PACKED_CLASS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: PackedConv2d, nn.Linear: PackedLinear}
_DENSE_CLASS: dict[type[nn.Module], type[nn.Module]] = {PackedConv2d: nn.Conv2d, PackedLinear: nn.Linear}


def pack_layers(model: nn.Module, release: Callable[[], object] | None = None, release_every: int = 64 << 20) -> int:
    """Pack every fp32 CPU ``nn.Conv2d`` / ``nn.Linear`` of ``model`` (exact types only: subclasses, float8
    storage and scaled weights are left as they are); returns how many layers were packed now. Layers
    already packed stay so; 0 when oneDNN's operators are missing.

    ``release`` (e.g. engine/malloc_tuning.py's ``release_free_memory``) is called after every
    ``release_every`` bytes of dense weights freed, and at the end: an allocator that keeps freed memory
    would otherwise hold the dense and the packed copy of the whole model at once."""
    if not packing_available():
        return 0
    count, freed = 0, 0
    with torch.no_grad(), torch.inference_mode(False):
        for module in model.modules():
            if not _packable(module):
                continue
            parameter = module._parameters["weight"]
            assert parameter is not None
            freed += parameter.numel() * parameter.element_size()
            packed = _pack_weight(module)
            module.__dict__[_PACKED_WEIGHT] = packed
            module.__dict__[_DENSE_PARAMETER] = parameter
            module._parameters["weight"] = nn.Parameter(
                torch.empty(parameter.shape, dtype=parameter.dtype, device="meta"), parameter.requires_grad)
            parameter.data = torch.empty(0, dtype=parameter.dtype)  # frees the dense values
            module.__class__ = _PACKED_CLASS[type(module)]
            module.__dict__[_HOOK] = module._register_state_dict_hook(_dense_state)
            count += 1
            if release is not None and freed >= release_every:
                release()
                freed = 0
    if release is not None and count:
        release()
    if count:
        log.debug("packed %d layers of %s for oneDNN", count, type(model).__name__)
    return count


def unpack_layers(model: nn.Module, parameters: Collection[str] | None = None) -> int:
    """Give packed layers of ``model`` their dense weight back (bit for bit) and their own class: every one,
    or those holding one of the named ``parameters`` (``"input_blocks.1.0.in_layers.2.weight"``: what a
    patch is about to change); returns how many layers were unpacked."""
    layers = None if parameters is None else {name.rpartition(".")[0] for name in parameters}
    count = 0
    with torch.no_grad(), torch.inference_mode(False):
        for name, module in model.named_modules():
            dense_class = _DENSE_CLASS.get(type(module))
            if dense_class is None or (layers is not None and name not in layers):
                continue
            parameter = module.__dict__.pop(_DENSE_PARAMETER)
            shaped = module._parameters["weight"]
            assert shaped is not None
            parameter.data = _dense(module.__dict__.pop(_PACKED_WEIGHT), shaped).contiguous()
            module._parameters["weight"] = parameter
            module.__dict__.pop(_HOOK).remove()
            module.__class__ = dense_class
            count += 1
    return count


def is_packed(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is packed."""
    return any(type(module) in _DENSE_CLASS for module in model.modules())


def _dense_state(module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """A state-dict hook: a packed layer's dense weight where its meta parameter would be."""
    key = prefix + "weight"
    packed = module.__dict__.get(_PACKED_WEIGHT)
    if key in state and packed is not None:
        state[key] = _dense(packed, module._parameters["weight"])  # type: ignore[arg-type]
