"""AUTOMATIC1111 hypernetworks: small MLPs that rewrite the inputs of the UNet's attention keys and values.

A hypernetwork holds, per width ``dim`` (320, 640, 768, 1024, 1280 in SD1/SD2), two MLPs: one for the
key input and one for the value input of every attention layer whose key/value input has ``dim``
features. Each MLP is a chain of layers ``Linear -> activation -> LayerNorm`` (the activation after
the last Linear only with ``activate_output``, the LayerNorm only with ``is_layer_norm``; dropout is
the identity at inference) and the inputs become::

    key_input   = x + mlp_k(x) * strength
    value_input = x + mlp_v(x) * strength

in self-attention (``x`` the normed tokens) and cross-attention (``x`` the text context) alike, as
AUTOMATIC1111's ``apply_hypernetwork`` (by ``context.shape[2]``) and ComfyUI's HypernetworkLoader
(attn1 and attn2 patches keyed by ``k.shape[-1]``) do. Read from both for facts; written anew.

:class:`HypernetworkPatch` is a sampling patch a MODEL handle carries: ``install`` registers one
function at the ``attn1_patch`` and ``attn2_patch`` points (engine.backend.unet) for one sampling run;
the weights are cast to the device and dtype of the tokens once per run. Strength 0 installs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

#: Activation names (A1111's ``activation_func``) -> the function applied. "swish" is torch's Hardswish
#: in A1111 and ComfyUI; the other names are A1111's lower-cased torch.nn activation classes with no
#: parameters and default arguments.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "linear": None,
    "relu": F.relu,
    "leakyrelu": F.leaky_relu,
    "elu": F.elu,
    "swish": F.hardswish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softsign": F.softsign,
    "mish": F.mish,
    "hardswish": F.hardswish,
    "gelu": F.gelu,
    "silu": F.silu,
    "selu": F.selu,
    "celu": F.celu,
    "softplus": F.softplus,
    "hardsigmoid": F.hardsigmoid,
    "hardtanh": F.hardtanh,
    "relu6": F.relu6,
    "logsigmoid": F.logsigmoid,
    "tanhshrink": F.tanhshrink,
    "softshrink": F.softshrink,
    "hardshrink": F.hardshrink,
}

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which A1111 uses


class Hooks(Protocol):
    """What the patch needs of engine.backend.guidance.GuidanceHooks."""

    def add_unet_patch(self, point: str, patch: Any) -> None: ...


@dataclass(frozen=True, eq=False)
class HyperLayer:
    """One ``Linear`` (``weight`` [out, in], ``bias`` [out]), then the activation when ``activate``,
    then a LayerNorm (``norm`` = (weight, bias), [out] each) when given."""

    weight: Tensor
    bias: Tensor
    activate: bool = False
    norm: tuple[Tensor, Tensor] | None = None

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def to(self, device: torch.device, dtype: torch.dtype) -> HyperLayer:
        norm = None if self.norm is None else (self.norm[0].to(device, dtype), self.norm[1].to(device, dtype))
        return HyperLayer(self.weight.to(device, dtype), self.bias.to(device, dtype), self.activate, norm)


@dataclass(frozen=True, eq=False)
class HyperMLP:
    """The layers of one MLP (the key's or the value's) and its activation name (a key of ACTIVATIONS)."""

    layers: tuple[HyperLayer, ...]
    activation: str = "linear"

    def __call__(self, x: Tensor) -> Tensor:
        """``mlp(x)`` (without the residual ``x +``)."""
        act = ACTIVATIONS[self.activation]
        for layer in self.layers:
            x = F.linear(x, layer.weight, layer.bias)
            if layer.activate and act is not None:
                x = act(x)
            if layer.norm is not None:
                x = F.layer_norm(x, (layer.out_features,), layer.norm[0], layer.norm[1], LAYER_NORM_EPS)
        return x

    def to(self, device: torch.device, dtype: torch.dtype) -> HyperMLP:
        return HyperMLP(tuple(layer.to(device, dtype) for layer in self.layers), self.activation)


@dataclass(frozen=True, eq=False)
class Hypernetwork:
    """A parsed hypernetwork file: ``modules[dim] = (mlp_for_key, mlp_for_value)`` and what it says of itself."""

    name: str
    modules: Mapping[int, tuple[HyperMLP, HyperMLP]]
    layer_structure: tuple[float, ...] = ()
    activation: str = "linear"
    layer_norm: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(sorted(self.modules))

    @property
    def nbytes(self) -> int:
        total = 0
        for pair in self.modules.values():
            for mlp in pair:
                for layer in mlp.layers:
                    tensors = [layer.weight, layer.bias, *(layer.norm or ())]
                    total += sum(t.numel() * t.element_size() for t in tensors)
        return total


def apply_hypernetwork(hypernetwork: Hypernetwork, key: Tensor, value: Tensor,
                       strength: float) -> tuple[Tensor, Tensor]:
    """``key + mlp_k(key) * strength`` and ``value + mlp_v(value) * strength`` for the MLP pair of the
    inputs' width; unchanged when the hypernetwork has none for it (weights used as given)."""
    pair = hypernetwork.modules.get(int(key.shape[-1]))
    if pair is None:
        return key, value
    return key + pair[0](key) * strength, value + pair[1](value) * strength


@dataclass(frozen=True, eq=False)
class HypernetworkPatch:
    """HypernetworkLoader's sampling patch: the hypernetwork on every attention's key/value inputs."""

    hypernetwork: Hypernetwork
    strength: float

    def install(self, hooks: Hooks, model_sampling: Any) -> None:
        if self.strength == 0.0:
            return
        state = _HypernetworkRun(self)
        hooks.add_unet_patch("attn1_patch", state)
        hooks.add_unet_patch("attn2_patch", state)


@dataclass
class _HypernetworkRun:
    """One sampling run's view of the patch: the MLPs cast to the tokens' device and dtype, kept per run."""

    patch: HypernetworkPatch
    cast: dict[tuple[int, torch.device, torch.dtype], tuple[HyperMLP, HyperMLP] | None] = field(default_factory=dict)

    def __call__(self, n: Tensor, key: Tensor, value: Tensor, ctx: Any) -> tuple[Tensor, Tensor, Tensor]:
        dim = int(key.shape[-1])
        index = (dim, key.device, key.dtype)
        if index not in self.cast:
            pair = self.patch.hypernetwork.modules.get(dim)
            self.cast[index] = None if pair is None else (pair[0].to(key.device, key.dtype),
                                                          pair[1].to(key.device, key.dtype))
        pair = self.cast[index]
        if pair is None:
            return n, key, value
        strength = self.patch.strength
        return n, key + pair[0](key) * strength, value + pair[1](value) * strength
