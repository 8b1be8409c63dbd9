"""Reading AUTOMATIC1111 hypernetwork files into :class:`engine.backend.hypernetwork.Hypernetwork`.

The ``.pt`` format (A1111's ``Hypernetwork.save``, read here with ``torch.load(weights_only=True)``
only) is a dict whose int keys are widths (320, 640, 768, 1024, 1280, ...), each a pair of state
dicts (key MLP, value MLP) of a ``torch.nn.Sequential`` named ``linear``: ``linear.N.weight`` /
``linear.N.bias`` for each Linear (2-D weight) and, with ``is_layer_norm``, each LayerNorm (1-D
weight) right after it. Activations and dropouts hold no weights, so their indices are skipped;
the layers are taken in index order. Oldest files name the two layers ``linear1`` / ``linear2``.
The other keys are metadata: ``layer_structure`` (width multipliers, e.g. [1, 2, 1]),
``activation_func``, ``is_layer_norm``, ``activate_output``, ``use_dropout``,
``last_layer_dropout``, ``weight_initialization``, ``name``, ``step``, ``sd_checkpoint``, ...

``.safetensors`` files hold the same tensors flat as ``{dim}.{0|1}.linear.N.weight`` with the metadata
as strings in the header (``layer_structure`` as JSON, flags as true/false).

A missing ``activate_output`` means False (ComfyUI's reading; A1111's loader assumes True, but A1111
always writes the key). Parsed files are cached by path, size and mtime (:func:`read_hypernetwork`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from engine.backend.hypernetwork import ACTIVATIONS, HyperLayer, HyperMLP, Hypernetwork
from engine.errors import ModelError
from engine.models.handles import FileRef
from engine.models.loaders import _first_reason

log = logging.getLogger(__name__)

_FLAT_KEY = re.compile(r"^(\d+)\.([01])\.(.+)$")
_PARAM_KEY = re.compile(r"^linear\.(\d+)\.(weight|bias)$")
_OLD_NAMES = {"linear1.": "linear.0.", "linear2.": "linear.1."}
_CACHED_FILES = 8


class HypernetworkFileError(ModelError):
    """A hypernetwork file that cannot be used: names the file and what is wrong."""


@functools.lru_cache(maxsize=_CACHED_FILES)
def read_hypernetwork(ref: FileRef) -> Hypernetwork:
    """The parsed hypernetwork of ``ref`` (cached by path, size and mtime: an edited file is re-read)."""
    path = Path(ref.path)
    data = _read_safetensors(path) if path.suffix.lower() == ".safetensors" else _read_pickle(path)
    hypernetwork = parse_hypernetwork(data, path.name)
    log.info("read hypernetwork %s: widths %s, activation %s, layer norm %s", path.name, list(hypernetwork.dims),
             hypernetwork.activation, hypernetwork.layer_norm)
    return hypernetwork


def _read_pickle(path: Path) -> dict[Any, Any]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many kinds; all mean "refused"
        raise HypernetworkFileError(
            f"hypernetwork {path.name} could not be read safely ({type(exc).__name__}: {_first_reason(exc)}); "
            "pickled files are read with weights_only=True only: re-save it as .safetensors") from None
    if not isinstance(data, dict):
        raise HypernetworkFileError(f"hypernetwork {path.name} does not hold a dict (found {type(data).__name__}); "
                                    "pick an AUTOMATIC1111 hypernetwork file")
    return data


def _read_safetensors(path: Path) -> dict[Any, Any]:
    """The flat safetensors layout folded back into the ``.pt`` dict (int widths, metadata keys)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (OSError, SafetensorError) as exc:
        raise HypernetworkFileError(f"hypernetwork {path.name} cannot be read as safetensors ({exc})") from exc
    data: dict[Any, Any] = {key: _metadata_value(value) for key, value in metadata.items()}
    for key, tensor in tensors.items():
        match = _FLAT_KEY.match(key)
        if match is None:
            raise HypernetworkFileError(f"hypernetwork {path.name}: unexpected tensor {key!r} (expected "
                                        "'<width>.<0|1>.linear.<N>.weight' keys)")
        pair = data.setdefault(int(match[1]), ({}, {}))
        pair[int(match[2])][match[3]] = tensor
    return data


def _metadata_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _flag(data: Mapping[Any, Any], key: str, default: bool, file_name: str) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, (bool, int)):
        raise HypernetworkFileError(f"hypernetwork {file_name}: {key} must be true or false, not {value!r}")
    return bool(value)


def _activation(data: Mapping[Any, Any], file_name: str) -> str:
    value = data.get("activation_func") or "linear"
    name = str(value).lower()
    if name not in ACTIVATIONS:
        raise HypernetworkFileError(f"hypernetwork {file_name}: unknown activation_func {value!r}; supported: "
                                    f"{', '.join(ACTIVATIONS)}")
    return name


def _layer_structure(data: Mapping[Any, Any], file_name: str) -> tuple[float, ...]:
    value = data.get("layer_structure")
    if value is None:
        return ()
    try:
        structure = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise HypernetworkFileError(f"hypernetwork {file_name}: layer_structure {value!r} is not a list of "
                                    "numbers") from None
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
        raise HypernetworkFileError(f"hypernetwork {file_name}: layer_structure {list(structure)} must start and "
                                    "end with 1 (e.g. [1, 2, 1])")
    return structure


def parse_hypernetwork(data: Mapping[Any, Any], file_name: str) -> Hypernetwork:
    """Validate an A1111 hypernetwork dict and build its MLPs (HypernetworkFileError naming what is wrong)."""
    activation = _activation(data, file_name)
    layer_norm = _flag(data, "is_layer_norm", False, file_name)
    activate_output = _flag(data, "activate_output", False, file_name)
    structure = _layer_structure(data, file_name)
    spec = _MlpSpec(file_name, activation, layer_norm, activate_output, structure)
    modules: dict[int, tuple[HyperMLP, HyperMLP]] = {}
    for key, value in data.items():
        if isinstance(key, bool) or not isinstance(key, int):
            continue
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, Mapping) for v in value):
            raise HypernetworkFileError(f"hypernetwork {file_name}: width {key} must hold two state dicts "
                                        "(key and value MLPs)")
        modules[key] = (spec.build(key, value[0], "key"), spec.build(key, value[1], "value"))
    if not modules:
        raise HypernetworkFileError(f"hypernetwork {file_name} holds no layers (no int width keys such as 768); "
                                    "pick an AUTOMATIC1111 hypernetwork file from models/hypernetworks")
    metadata = {str(k): v for k, v in data.items() if not isinstance(k, int) and not isinstance(v, torch.Tensor)}
    name = str(data.get("name") or Path(file_name).stem)
    return Hypernetwork(name, modules, structure, activation, layer_norm, metadata)


class _MlpSpec:
    """The file-wide settings that shape every MLP."""

    def __init__(self, file_name: str, activation: str, layer_norm: bool, activate_output: bool,
                 structure: tuple[float, ...]) -> None:
        self.file_name = file_name
        self.activation = activation
        self.layer_norm = layer_norm
        self.activate_output = activate_output
        self.structure = structure

    def fail(self, dim: int, which: str, problem: str) -> HypernetworkFileError:
        return HypernetworkFileError(f"hypernetwork {self.file_name}: the {which} MLP of width {dim} {problem}")

    def build(self, dim: int, state: Mapping[str, Any], which: str) -> HyperMLP:
        params = self._params(dim, state, which)
        linears: list[tuple[torch.Tensor, torch.Tensor]] = []
        norms: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for index in sorted(params):
            weight, bias = params[index]
            if weight.ndim == 2:
                linears.append((weight, bias))
                norms.append(None)
            elif weight.ndim == 1 and self.layer_norm and linears and norms[-1] is None:
                norms[-1] = (weight, bias)
            else:
                raise self.fail(dim, which, f"has an unexpected {weight.ndim}-D weight at linear.{index} "
                                f"(is_layer_norm is {self.layer_norm})")
        if not linears:
            raise self.fail(dim, which, "has no Linear layers")
        if self.layer_norm and any(norm is None for norm in norms):
            raise self.fail(dim, which, "lacks a LayerNorm after a Linear although is_layer_norm is true")
        self._check_shapes(dim, which, linears, norms)
        last = len(linears) - 1
        layers = tuple(HyperLayer(w.float(), b.float(), activate=(i < last or self.activate_output),
                                  norm=None if n is None else (n[0].float(), n[1].float()))
                       for i, ((w, b), n) in enumerate(zip(linears, norms, strict=True)))
        return HyperMLP(layers, self.activation)

    def _params(self, dim: int, state: Mapping[str, Any], which: str) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        found: dict[int, dict[str, torch.Tensor]] = {}
        for raw_key, tensor in state.items():
            key = str(raw_key)
            for old, new in _OLD_NAMES.items():
                key = new + key[len(old):] if key.startswith(old) else key
            match = _PARAM_KEY.match(key)
            if match is None or not isinstance(tensor, torch.Tensor):
                raise self.fail(dim, which, f"has an unexpected entry {raw_key!r} (expected linear.N.weight / .bias)")
            found.setdefault(int(match[1]), {})[match[2]] = tensor
        params = {}
        for index, pair in found.items():
            if set(pair) != {"weight", "bias"}:
                raise self.fail(dim, which, f"has linear.{index}.weight or .bias missing")
            params[index] = (pair["weight"], pair["bias"])
        return params

    def _check_shapes(self, dim: int, which: str, linears: list[tuple[torch.Tensor, torch.Tensor]],
                      norms: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        width = dim
        for i, ((weight, bias), norm) in enumerate(zip(linears, norms, strict=True)):
            out, inp = weight.shape
            if inp != width or bias.shape != (out,) or (norm is not None and (
                    norm[0].shape != (out,) or norm[1].shape != (out,))):
                raise self.fail(dim, which, f"has Linear {i} of shape {list(weight.shape)} after width {width} "
                                "(the layers do not chain)")
            if self.structure and len(self.structure) == len(linears) + 1 and out != int(dim * self.structure[i + 1]):
                raise self.fail(dim, which, f"has Linear {i} with {out} outputs but layer_structure "
                                f"{list(self.structure)} asks for {int(dim * self.structure[i + 1])}")
            width = out
        if width != dim:
            raise self.fail(dim, which, f"ends at width {width}, not {dim}")
        if self.structure and len(self.structure) != len(linears) + 1:
            raise self.fail(dim, which, f"has {len(linears)} Linear layers but layer_structure "
                            f"{list(self.structure)} asks for {len(self.structure) - 1}")
