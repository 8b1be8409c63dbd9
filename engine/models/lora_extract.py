"""Extracting a LoRA from a difference model: the tensors LoraSave ("Extract and Save Lora") writes.

A difference model is a MODEL or CLIP whose weights *are* a difference, ``tuned - base`` (ModelMergeSubtract /
CLIPMergeSubtract with multiplier 1). Each of its weights becomes LoRA keys under the kohya name that Loom's
LoRA loader maps back to that very weight (engine/models/lora_keys.py), so ``base`` + the LoRA at strength 1
is ``tuned`` again, up to the rank and to fp16 rounding:

* ``standard``: a linear weight ``[out, in]`` or a convolution ``[out, in, kh, kw]`` (as the matrix
  ``[out, in * kh * kw]``) is factored by a truncated SVD in float32 on the CPU, ``r = min(rank, out,
  in * kh * kw)``: ``lora_up = U[:, :r] * S[:r]``, ``lora_down = Vh[:r]``, the best rank-``r`` approximation
  in the Frobenius norm (Eckart-Young). Convolutions store ``lora_down`` as ``[r, in, kh, kw]`` and ``lora_up``
  as ``[out, r, 1, 1]``, kohya's layout; ``alpha`` is ``r`` (a 0-d float32 tensor), so the scale
  ``alpha / r`` is 1. 1-D weights (norms) are stored whole as ``.diff`` when ``bias_diff`` is on.
* ``full_diff``: every weight is stored whole as ``.diff`` (exact up to the stored dtype).
* ``bias_diff``: biases are stored whole as ``.diff_b``.

UNet names are kohya's (:func:`~engine.models.lora_keys.kohya_unet_key`: diffusers module paths for
SD1.x/SD2.x, LDM paths for SDXL); text encoders take ``lora_te_`` (one tower) or ``lora_te1_`` / ``lora_te2_``
(SDXL's two). Every name is checked against the loader's own key maps. Weights no LoRA key of Loom's can
name (a text encoder's embeddings and layer norms) are left out; :func:`changed_unnamed` lists those that
differ, so the caller can say what the LoRA does not carry.

Nothing is computed up front: :func:`lora_entries` returns safetensors entries whose ``make`` reads one
weight and factors it when the file writer reaches it, so one weight's SVD exists at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.backend.text import TextEncoder
from engine.backend.unet import UNetModel
from engine.errors import ModelError
from engine.models.lora_keys import kohya_unet_names, text_key_map
from engine.models.safetensors_writer import TensorEntry

__all__ = [
    "LORA_TYPES",
    "DiffPart",
    "DiffWeight",
    "changed_unnamed",
    "lora_entries",
    "text_part",
    "truncated_svd",
    "unet_part",
]

#: LoraSave's ``lora_type`` choices (ComfyUI's order: the first is the default).
LORA_TYPES: tuple[str, ...] = ("standard", "full_diff")

#: Reads the current value of one parameter of a part (by its name in the module).
ReadWeight = Callable[[str], Tensor]


@dataclass(frozen=True)
class DiffWeight:
    """One parameter of a difference model and the LoRA target (kohya name) that carries it."""

    param: str  # the parameter's name in its module: "input_blocks.1.1.proj_in.weight"
    target: str  # "lora_unet_down_blocks_0_attentions_0_proj_in"
    shape: tuple[int, ...]

    @property
    def is_bias(self) -> bool:
        return self.param.endswith(".bias")


@dataclass(frozen=True)
class DiffPart:
    """A difference model's UNet or text encoder: its nameable weights, the rest, and how to read them."""

    label: str  # "UNet" | "text encoder"
    weights: tuple[DiffWeight, ...]
    unnamed: tuple[str, ...]  # parameters no LoRA key of Loom's can name
    read: ReadWeight


def unet_part(unet: UNetModel, read: ReadWeight) -> DiffPart:
    """The weights of a difference UNet under kohya's names (LDM paths when a module has no diffusers name)."""
    paths = [name for name, module in unet.named_modules() if name and _holds_parameters(module)]
    return _part("UNet", unet, kohya_unet_names(paths, unet.config), read)


def text_part(encoder: TextEncoder, read: ReadWeight) -> DiffPart:
    """The weights of a difference text encoder under kohya's names: ``lora_te_`` for one tower, ``lora_te1_``
    (clip_l) and ``lora_te2_`` (clip_g) for SDXL's two."""
    prefixes = ("lora_te1_", "lora_te2_") if len(encoder.towers) > 1 else ("lora_te_",)
    names: dict[str, str] = {}
    for name, path in text_key_map(encoder).items():
        if name.startswith(prefixes):
            names.setdefault(path, name)
    return _part("text encoder", encoder, names, read)


def _holds_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _part(label: str, module: nn.Module, names: Mapping[str, str], read: ReadWeight) -> DiffPart:
    weights: list[DiffWeight] = []
    unnamed: list[str] = []
    for param, tensor in module.named_parameters():
        path, _, leaf = param.rpartition(".")
        target = names.get(path)
        if target is None or leaf not in ("weight", "bias"):
            unnamed.append(param)
        else:
            weights.append(DiffWeight(param, target, tuple(tensor.shape)))
    return DiffPart(label, tuple(weights), tuple(unnamed), read)


def changed_unnamed(part: DiffPart) -> list[str]:
    """The parameters the LoRA cannot carry whose difference is not zero."""
    return [param for param in part.unnamed if bool(part.read(param).detach().any())]


def truncated_svd(diff: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(lora_up, lora_down)`` of a weight difference: ``up @ down`` (both flattened to matrices) is the best
    approximation of ``diff`` (as ``[out, -1]``) of rank ``min(rank, out, in_flat)``; kohya's shapes
    (``up [out, r, 1, 1]``, ``down [r, in, kh, kw]`` for a convolution). Float32, on the CPU."""
    matrix = diff.detach().to(device="cpu", dtype=torch.float32).reshape(diff.shape[0], -1)
    rank = _rank(tuple(diff.shape), rank)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up = (u[:, :rank] * s[:rank]).reshape(_up_shape(tuple(diff.shape), rank))
    down = vh[:rank].reshape(_down_shape(tuple(diff.shape), rank))
    return up.contiguous(), down.contiguous()


def _rank(shape: tuple[int, ...], rank: int) -> int:
    return min(rank, shape[0], math.prod(shape[1:]))


def _up_shape(shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    return (shape[0], rank, *(1 for _ in shape[2:]))


def _down_shape(shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    return (rank, *shape[1:])


def lora_entries(part: DiffPart, rank: int, lora_type: str, bias_diff: bool,
                 dtype: torch.dtype = torch.float16) -> list[TensorEntry]:
    """The safetensors entries of one part's LoRA (see the module doc); tensors in ``dtype``, alphas in float32.

    Each entry's ``make`` reads its weight through ``part.read`` when it is written; the two factors of a
    weight come from one SVD.
    """
    if lora_type not in LORA_TYPES:
        raise ValueError(f"lora_type {lora_type!r}: use one of {', '.join(LORA_TYPES)}")
    if rank < 1:
        raise ValueError(f"rank {rank}: a LoRA needs rank 1 or more")
    factors = _Factors(part, rank)
    entries: list[TensorEntry] = []
    for weight in part.weights:
        entries.extend(_weight_entries(weight, part.read, factors, rank, lora_type, bias_diff, dtype))
    return entries


def _weight_entries(weight: DiffWeight, read: ReadWeight, factors: _Factors, rank: int, lora_type: str,
                    bias_diff: bool, dtype: torch.dtype) -> Iterator[TensorEntry]:
    def whole() -> Tensor:
        return read(weight.param).detach()

    if weight.is_bias:
        if bias_diff:
            yield TensorEntry(f"{weight.target}.diff_b", weight.shape, dtype, whole)
        return
    if lora_type == "full_diff":
        yield TensorEntry(f"{weight.target}.diff", weight.shape, dtype, whole)
        return
    if len(weight.shape) < 2:
        if bias_diff:
            yield TensorEntry(f"{weight.target}.diff", weight.shape, dtype, whole)
        return
    r = _rank(weight.shape, rank)
    yield TensorEntry(f"{weight.target}.alpha", (), torch.float32, lambda: torch.tensor(float(r)))
    yield TensorEntry(f"{weight.target}.lora_down.weight", _down_shape(weight.shape, r), dtype,
                      lambda: factors.of(weight)[1])
    yield TensorEntry(f"{weight.target}.lora_up.weight", _up_shape(weight.shape, r), dtype,
                      lambda: factors.of(weight)[0])


class _Factors:
    """The SVD factors of the last weight asked for (a weight's down and up are written one after the other)."""

    def __init__(self, part: DiffPart, rank: int) -> None:
        self._part = part
        self._rank = rank
        self._param = ""
        self._factors: tuple[Tensor, Tensor] | None = None

    def of(self, weight: DiffWeight) -> tuple[Tensor, Tensor]:
        if self._factors is None or self._param != weight.param:
            self._factors = None  # the last weight's factors go before the next weight's are made
            try:
                self._factors = truncated_svd(self._part.read(weight.param), self._rank)
            except torch.linalg.LinAlgError as exc:
                raise ModelError(f"LoRA extraction: the SVD of the {self._part.label} weight {weight.param} "
                                 f"({weight.target}) failed: {exc}; save it with lora_type full_diff") from exc
            self._param = weight.param
        return self._factors
