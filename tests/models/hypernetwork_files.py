"""Writing AUTOMATIC1111 hypernetwork files for tests: the ``.pt`` dict A1111's ``Hypernetwork.save``
writes (int widths -> two ``torch.nn.Sequential`` state dicts named ``linear.N``, then the metadata
keys) and the flat ``.safetensors`` layout (``{dim}.{0|1}.linear.N.weight``, metadata as strings)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

#: A1111's activation classes for the names the tests use ("swish" is Hardswish there).
TORCH_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "softsign": nn.Softsign, "mish": nn.Mish, "gelu": nn.GELU,
}


@dataclass(frozen=True)
class Settings:
    layer_structure: tuple[float, ...] = (1, 2, 1)
    activation: str = "linear"
    layer_norm: bool = False
    activate_output: bool = False
    use_dropout: bool = False
    last_layer_dropout: bool = False


def reference_sequential(dim: int, s: Settings) -> nn.Sequential:
    """The MLP as A1111 lays it out: per step Linear, activation (not after the last Linear unless
    activate_output), LayerNorm (with is_layer_norm), Dropout(0.3) (with use_dropout, not on the last
    step, nor on the one before it unless last_layer_dropout). Its state dict names the file's keys."""
    layers: list[nn.Module] = []
    steps = len(s.layer_structure) - 1
    for i in range(steps):
        out = int(dim * s.layer_structure[i + 1])
        layers.append(nn.Linear(int(dim * s.layer_structure[i]), out))
        if s.activation != "linear" and (i < steps - 1 or s.activate_output):
            layers.append(TORCH_ACTIVATIONS[s.activation]())
        if s.layer_norm:
            layers.append(nn.LayerNorm(out))
        if s.use_dropout and (i < steps - 2 or (s.last_layer_dropout and i < steps - 1)):
            layers.append(nn.Dropout(p=0.3))
    return nn.Sequential(*layers)


def random_mlp(dim: int, s: Settings, generator: torch.Generator, scale: float = 0.2) -> nn.Sequential:
    """A reference MLP with random weights (LayerNorm gains near 1), in eval mode."""
    mlp = reference_sequential(dim, s)
    with torch.no_grad():
        for module in mlp:
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * scale)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * scale)
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + torch.randn(module.weight.shape, generator=generator) * 0.1)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return mlp.eval()


def module_state(mlp: nn.Sequential) -> dict[str, torch.Tensor]:
    """The state dict of A1111's HypernetworkModule around ``mlp`` (its Sequential is named ``linear``)."""
    return {f"linear.{key}": tensor for key, tensor in mlp.state_dict().items()}


def hypernetwork_dict(mlps: dict[int, tuple[nn.Sequential, nn.Sequential]], s: Settings,
                      name: str = "test-hn") -> dict[Any, Any]:
    """The dict A1111 saves: each width's (key, value) state dicts, then its metadata keys."""
    data: dict[Any, Any] = {dim: (module_state(pair[0]), module_state(pair[1])) for dim, pair in mlps.items()}
    data.update({
        "step": 100, "name": name, "layer_structure": list(s.layer_structure), "activation_func": s.activation,
        "is_layer_norm": s.layer_norm, "weight_initialization": "Normal", "use_dropout": s.use_dropout,
        "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5", "activate_output": s.activate_output,
        "last_layer_dropout": s.last_layer_dropout,
    })
    return data


def make_mlps(dims: tuple[int, ...], s: Settings, seed: int = 0,
              scale: float = 0.2) -> dict[int, tuple[nn.Sequential, nn.Sequential]]:
    generator = torch.Generator().manual_seed(seed)
    return {dim: (random_mlp(dim, s, generator, scale), random_mlp(dim, s, generator, scale)) for dim in dims}


def write_pt(path: Path, data: dict[Any, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def write_safetensors(path: Path, data: dict[Any, Any]) -> Path:
    """The same file flat: tensors ``{dim}.{0|1}.{key}``, metadata as strings (lists as JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(key, int):
            for index, state in enumerate(value):
                tensors.update({f"{key}.{index}.{name}": t.contiguous() for name, t in state.items()})
        else:
            metadata[key] = json.dumps(value) if isinstance(value, (list, bool)) else str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path
