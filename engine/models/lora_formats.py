"""LoRA file formats: split a LoRA state dict into targets and turn each into a weight delta.

A LoRA file is a flat dict of tensors. Every key is ``TARGET`` + a component suffix; the target is
a module name in one of several spellings (kohya ``lora_unet_down_blocks_0_..._to_q``, PEFT
``unet.down_blocks.0....to_q``, ...) that engine/models/patching.py resolves against the model. This
module knows only the components and the arithmetic of each adapter type:

* **LoRA / LoCon** — ``lora_up.weight`` / ``lora_down.weight`` (kohya), ``lora_B.weight`` /
  ``lora_A.weight`` (PEFT, also ``.default.weight`` and bare), ``lora.up/down.weight``,
  ``_lora.up/down.weight`` (diffusers attention processors), ``lora_linear_layer.up/down.weight``;
  optional ``lora_mid.weight`` (LoCon Tucker core). ``delta = up.flatten(1) @ down.flatten(1)``;
  with a mid core ``delta[o, i, h, w] = sum_ab up[o, a] mid[a, b, h, w] down[b, i]``.
* **LoHa** — ``hada_w1_a/b``, ``hada_w2_a/b`` (optional Tucker ``hada_t1/t2``):
  ``delta = (w1_a @ w1_b) * (w2_a @ w2_b)``; with Tucker cores
  ``m[p, q, h, w] = sum_ij t[i, j, h, w] w_a[i, p] w_b[j, q]`` for each factor.
* **LoKr** — ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``, ``lokr_w2`` or ``lokr_w2_a @ lokr_w2_b`` (or the
  Tucker form with ``lokr_t2``): ``delta = kron(w1, w2)``.
* **diff** — ``diff`` / ``diff_b``: a full difference for the weight / the bias.

Scaling: ``alpha`` (the ``TARGET.alpha`` tensor) divided by the rank (``down.shape[0]``, LoHa
``w1_b.shape[0]``, LoKr the inner size of its decomposed factor); 1.0 without an alpha key (and for
LoKr with two full factors). The final change is ``strength * scale * delta``, computed in float32.
DoRA (``dora_scale``), OFT/BOFT, GLoRA and ``w_norm``/``set_weight`` are recognised and reported as
unsupported.

A model whose checkpoint fuses weights that a LoRA trains apart (SD3's and Flux's ``qkv`` from diffusers'
``to_q`` / ``to_k`` / ``to_v``, Flux's ``linear1`` also from ``proj_mlp``) gets one :class:`RowBlocksAdapter`
per fused weight: each part's adapter (any of the above, with its own alpha and rank) changes only its
block of rows, optionally with the block's two halves swapped (diffusers' (scale, shift) order of a
modulation the checkpoint stores as (shift, scale)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "Adapter",
    "DiffAdapter",
    "LoHaAdapter",
    "LoKrAdapter",
    "LoRAAdapter",
    "ParsedLora",
    "RowBlock",
    "RowBlocksAdapter",
    "fits",
    "parse_lora",
    "split_key",
]

#: (key suffix, component), longest first so that no suffix shadows a longer one.
_SUFFIXES: tuple[tuple[str, str], ...] = tuple(sorted((
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_mid.weight", "mid"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
    (".lora_B", "up"), (".lora_A", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    ("_lora.up.weight", "up"), ("_lora.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
    (".alpha", "alpha"),
    (".hada_w1_a", "hada_w1_a"), (".hada_w1_b", "hada_w1_b"), (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"), (".hada_t1", "hada_t1"), (".hada_t2", "hada_t2"),
    (".lokr_w1", "lokr_w1"), (".lokr_w1_a", "lokr_w1_a"), (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2", "lokr_w2"), (".lokr_w2_a", "lokr_w2_a"), (".lokr_w2_b", "lokr_w2_b"), (".lokr_t2", "lokr_t2"),
    (".diff", "diff"), (".diff_b", "diff_b"),
    (".dora_scale", "unsupported:DoRA"), (".oft_blocks", "unsupported:OFT"), (".oft_diag", "unsupported:OFT"),
    (".rescale", "unsupported:OFT"), (".a1.weight", "unsupported:GLoRA"), (".a2.weight", "unsupported:GLoRA"),
    (".b1.weight", "unsupported:GLoRA"), (".b2.weight", "unsupported:GLoRA"),
    (".w_norm", "unsupported:norm"), (".b_norm", "unsupported:norm"), (".set_weight", "unsupported:set_weight"),
    (".reshape_weight", "unsupported:reshape"),
), key=lambda item: -len(item[0])))


def split_key(key: str) -> tuple[str, str] | None:
    """``(target, component)`` of a LoRA key, or None when no known suffix ends it."""
    for suffix, component in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], component
    return None


def _f32(tensor: Tensor, device: torch.device) -> Tensor:
    return tensor.to(device=device, dtype=torch.float32)


def _scale(alpha: Tensor | None, rank: int | None) -> float:
    if alpha is None or not rank:
        return 1.0
    return float(alpha) / rank


def _tucker(core: Tensor, w_a: Tensor, w_b: Tensor) -> Tensor:
    """``m[p, q, h, w] = sum_ij core[i, j, h, w] * w_a[i, p] * w_b[j, q]`` (LyCORIS' Tucker layout)."""
    return torch.einsum("ijhw,ip,jq->pqhw", core, w_a, w_b)


def _rows(weight: Tensor) -> Tensor | None:
    """``weight`` as a [rows, -1] view (for addmm), or None when it is not contiguous."""
    return weight.view(weight.shape[0], -1) if weight.is_contiguous() else None


class Adapter:
    """One target's change, ``strength * scale * delta``, applied to float32 weights.

    ``added`` writes ``weight + change`` into ``out`` (a new tensor when None; the weight is only read);
    ``add_to`` changes the weight in place.
    """

    kind = "adapter"

    def delta_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def delta(self, device: torch.device) -> Tensor:
        """The scaled delta (``scale * delta``) in float32, in :meth:`delta_shape`."""
        raise NotImplementedError

    def added(self, weight: Tensor, strength: float, out: Tensor | None = None) -> Tensor:
        delta = self.delta(weight.device).reshape(weight.shape)
        if out is None:
            return torch.add(weight, delta, alpha=strength)
        return torch.add(weight, delta, alpha=strength, out=out)

    def add_to(self, weight: Tensor, strength: float) -> None:
        weight.add_(self.delta(weight.device).reshape(weight.shape), alpha=strength)

    def add_to_patched(self, weight: Tensor, original: Tensor, strength: float) -> None:
        """:meth:`add_to` for a weight other patches already changed; ``original`` (float32) is the unpatched
        weight, which only changes relative to it (a model used as a LoRA) read."""
        self.add_to(weight, strength)


@dataclass(frozen=True, eq=False)
class ModelDiffAdapter(Adapter):
    """Another model's weight used as a LoRA (ComfyUI's model_as_lora): the change is ``target - original``."""

    target: Tensor
    kind = "model"

    def delta_shape(self) -> tuple[int, ...]:
        return tuple(self.target.shape)

    def added(self, weight: Tensor, strength: float, out: Tensor | None = None) -> Tensor:
        delta = _f32(self.target, weight.device) - weight
        if out is None:
            return torch.add(weight, delta, alpha=strength)
        return torch.add(weight, delta, alpha=strength, out=out)

    def add_to(self, weight: Tensor, strength: float) -> None:
        raise TypeError("a model used as a LoRA changes a weight relative to the original: use add_to_patched")

    def add_to_patched(self, weight: Tensor, original: Tensor, strength: float) -> None:
        weight.add_(_f32(self.target, weight.device) - original, alpha=strength)


def fits(adapter: Adapter, shape: tuple[int, ...]) -> bool:
    """Whether the adapter's delta can be added to a weight of ``shape`` (same rows, same size)."""
    delta = adapter.delta_shape()
    if isinstance(adapter, DiffAdapter):
        return delta == tuple(shape)
    return bool(shape) and delta[0] == shape[0] and math.prod(delta) == math.prod(shape)


@dataclass(frozen=True, eq=False)
class LoRAAdapter(Adapter):
    """``up @ down`` (LoRA, LoCon), with an optional Tucker core ``mid`` for convolutions."""

    up: Tensor
    down: Tensor
    mid: Tensor | None = None
    alpha: Tensor | None = None
    kind = "LoRA"

    @property
    def scale(self) -> float:
        return _scale(self.alpha, self.down.shape[0])

    def delta_shape(self) -> tuple[int, ...]:
        if self.mid is not None:
            return (self.up.shape[0], self.down.shape[1], *self.mid.shape[2:])
        return (self.up.shape[0], math.prod(self.down.shape[1:]))

    def _down(self, device: torch.device) -> Tensor:
        down = _f32(self.down, device).flatten(1)
        if self.mid is None:
            return down
        mid = _f32(self.mid, device)
        return torch.einsum("abhw,bi->aihw", mid, down).flatten(1)

    def delta(self, device: torch.device) -> Tensor:
        return torch.mm(_f32(self.up, device).flatten(1), self._down(device)).mul_(self.scale)

    def added(self, weight: Tensor, strength: float, out: Tensor | None = None) -> Tensor:
        rows = _rows(weight)
        out_rows = None if out is None else _rows(out)
        if rows is None or (out is not None and out_rows is None):
            return super().added(weight, strength, out)
        up, down = _f32(self.up, weight.device).flatten(1), self._down(weight.device)
        if out is None or out_rows is None:  # out_rows is None exactly when out is None here
            return torch.addmm(rows, up, down, alpha=strength * self.scale).view(weight.shape)
        torch.addmm(rows, up, down, alpha=strength * self.scale, out=out_rows)
        return out

    def add_to(self, weight: Tensor, strength: float) -> None:
        rows = _rows(weight)
        if rows is None:
            super().add_to(weight, strength)
            return
        rows.addmm_(_f32(self.up, weight.device).flatten(1), self._down(weight.device), alpha=strength * self.scale)


@dataclass(frozen=True, eq=False)
class LoHaAdapter(Adapter):
    """Hadamard product of two low-rank products (LoHa), optionally with Tucker cores."""

    w1_a: Tensor
    w1_b: Tensor
    w2_a: Tensor
    w2_b: Tensor
    t1: Tensor | None = None
    t2: Tensor | None = None
    alpha: Tensor | None = None
    kind = "LoHa"

    @property
    def scale(self) -> float:
        return _scale(self.alpha, self.w1_b.shape[0])

    def delta_shape(self) -> tuple[int, ...]:
        if self.t1 is not None:
            return (self.w1_a.shape[1], self.w1_b.shape[1], *self.t1.shape[2:])
        return (self.w1_a.shape[0], math.prod(self.w1_b.shape[1:]))

    def _factor(self, w_a: Tensor, w_b: Tensor, core: Tensor | None, device: torch.device) -> Tensor:
        if core is not None:
            return _tucker(_f32(core, device), _f32(w_a, device), _f32(w_b, device).flatten(1))
        return torch.mm(_f32(w_a, device), _f32(w_b, device).flatten(1))

    def delta(self, device: torch.device) -> Tensor:
        first = self._factor(self.w1_a, self.w1_b, self.t1, device)
        second = self._factor(self.w2_a, self.w2_b, self.t2, device)
        return first.mul_(second).mul_(self.scale)


@dataclass(frozen=True, eq=False)
class LoKrAdapter(Adapter):
    """Kronecker product of two factors (LoKr); each factor full or a low-rank product."""

    w1: Tensor | None = None
    w1_a: Tensor | None = None
    w1_b: Tensor | None = None
    w2: Tensor | None = None
    w2_a: Tensor | None = None
    w2_b: Tensor | None = None
    t2: Tensor | None = None
    alpha: Tensor | None = None
    kind = "LoKr"

    @property
    def scale(self) -> float:
        rank = None
        if self.w2 is None and self.w2_b is not None:
            rank = self.w2_b.shape[0]
        elif self.w1 is None and self.w1_b is not None:
            rank = self.w1_b.shape[0]
        return _scale(self.alpha, rank)

    def _shape1(self) -> tuple[int, int]:
        if self.w1 is not None:
            return self.w1.shape[0], self.w1.shape[1]
        assert self.w1_a is not None and self.w1_b is not None
        return self.w1_a.shape[0], self.w1_b.shape[1]

    def _shape2(self) -> tuple[int, ...]:
        if self.w2 is not None:
            return tuple(self.w2.shape)
        assert self.w2_a is not None and self.w2_b is not None
        if self.t2 is not None:
            return (self.w2_a.shape[1], self.w2_b.shape[1], *self.t2.shape[2:])
        return (self.w2_a.shape[0], math.prod(self.w2_b.shape[1:]))

    def delta_shape(self) -> tuple[int, ...]:
        (a, b), second = self._shape1(), self._shape2()
        return (a * second[0], b * math.prod(second[1:]))

    def _first(self, device: torch.device) -> Tensor:
        if self.w1 is not None:
            return _f32(self.w1, device)
        assert self.w1_a is not None and self.w1_b is not None
        return torch.mm(_f32(self.w1_a, device), _f32(self.w1_b, device))

    def _second(self, device: torch.device) -> Tensor:
        if self.w2 is not None:
            return _f32(self.w2, device).flatten(1)
        assert self.w2_a is not None and self.w2_b is not None
        if self.t2 is not None:
            core = _tucker(_f32(self.t2, device), _f32(self.w2_a, device), _f32(self.w2_b, device).flatten(1))
            return core.flatten(1)
        return torch.mm(_f32(self.w2_a, device), _f32(self.w2_b, device).flatten(1))

    def delta(self, device: torch.device) -> Tensor:
        # kron of [a, b] with [c, d*h*w] lays rows and input channels out as the [a*c, b*d, h, w] weight needs.
        return torch.kron(self._first(device), self._second(device)).mul_(self.scale)


@dataclass(frozen=True, eq=False)
class DiffAdapter(Adapter):
    """A full difference (``diff`` for a weight, ``diff_b`` for a bias); no alpha."""

    diff: Tensor
    kind = "diff"

    def delta_shape(self) -> tuple[int, ...]:
        return tuple(self.diff.shape)

    def delta(self, device: torch.device) -> Tensor:
        return _f32(self.diff, device)


@dataclass(frozen=True)
class RowBlock:
    """Rows ``start .. start + rows`` of a weight (and its bias); ``swap_halves``: the adapter's first half of
    rows lands on the block's second half and its second half on the first."""

    start: int
    rows: int
    swap_halves: bool = False

    def shape_in(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of this block of a weight of ``shape``."""
        return (self.rows, *shape[1:])

    def within(self, shape: tuple[int, ...]) -> bool:
        """Whether the block lies inside a weight of ``shape`` (and has two equal halves to swap)."""
        if not shape or self.rows <= 0 or self.start < 0 or self.start + self.rows > shape[0]:
            return False
        return not self.swap_halves or self.rows % 2 == 0


@dataclass(frozen=True, eq=False)
class RowBlocksAdapter(Adapter):
    """Adapters that each change one block of rows of a weight of ``shape``; their changes add up (a file that
    has both a fused target and its parts changes the shared rows by both)."""

    shape: tuple[int, ...]
    blocks: tuple[tuple[RowBlock, Adapter], ...]
    kind = "row blocks"

    def delta_shape(self) -> tuple[int, ...]:
        return self.shape

    def delta(self, device: torch.device) -> Tensor:
        out = torch.zeros(self.shape, dtype=torch.float32, device=device)
        self.add_to(out, 1.0)
        return out

    def added(self, weight: Tensor, strength: float, out: Tensor | None = None) -> Tensor:
        result = weight.clone() if out is None else out.copy_(weight)
        self.add_to(result, strength)
        return result

    def add_to(self, weight: Tensor, strength: float) -> None:
        for block, adapter in self.blocks:
            rows = weight.narrow(0, block.start, block.rows)  # a view: changing it changes the weight
            if not block.swap_halves:
                adapter.add_to(rows, strength)
                continue
            half = block.rows // 2
            delta = adapter.delta(weight.device).reshape(rows.shape)
            rows[:half].add_(delta[half:], alpha=strength)
            rows[half:].add_(delta[:half], alpha=strength)


@dataclass
class ParsedLora:
    """A LoRA file split into targets: ``adapters[target]`` maps ``"weight"`` / ``"bias"`` to an adapter.

    ``unused`` lists keys that make no adapter (unknown suffix, incomplete or unsupported), with why.
    ``keys[target]`` are the file's keys of each target (to name them in warnings); ``all_keys`` every key.
    """

    adapters: dict[str, dict[str, Adapter]] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)
    all_keys: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for parts in self.adapters.values():
            for adapter in parts.values():
                for value in vars(adapter).values():
                    if isinstance(value, Tensor) and id(value) not in seen:
                        seen.add(id(value))
                        total += value.numel() * value.element_size()
        return total


def parse_lora(tensors: Mapping[str, Tensor]) -> ParsedLora:
    """Group a LoRA state dict by target and build each target's adapter(s)."""
    groups: dict[str, dict[str, str]] = {}
    parsed = ParsedLora(all_keys=list(tensors))
    for key in tensors:
        split = split_key(key)
        if split is None:
            parsed.unused[key] = "unknown key"
            continue
        target, component = split
        groups.setdefault(target, {})[component] = key
        parsed.keys.setdefault(target, []).append(key)
    for target, components in groups.items():
        found = {name: tensors[key] for name, key in components.items()}
        adapters, problem = _adapters(found)
        if adapters:
            parsed.adapters[target] = adapters
        elif problem:
            for key in components.values():
                parsed.unused[key] = problem
    return parsed


def _adapters(found: Mapping[str, Tensor]) -> tuple[dict[str, Adapter], str]:
    """The adapters of one target, or ``({}, why not)``."""
    unsupported = sorted({name.split(":", 1)[1] for name in found if name.startswith("unsupported:")})
    if unsupported:
        return {}, f"unsupported format ({', '.join(unsupported)})"
    adapters: dict[str, Adapter] = {}
    alpha = found.get("alpha")
    if "up" in found and "down" in found:
        adapters["weight"] = LoRAAdapter(found["up"], found["down"], found.get("mid"), alpha)
    elif all(f"hada_w{i}_{j}" in found for i in (1, 2) for j in "ab"):
        adapters["weight"] = LoHaAdapter(found["hada_w1_a"], found["hada_w1_b"], found["hada_w2_a"],
                                         found["hada_w2_b"], found.get("hada_t1"), found.get("hada_t2"), alpha)
    elif _has_lokr(found):
        adapters["weight"] = LoKrAdapter(found.get("lokr_w1"), found.get("lokr_w1_a"), found.get("lokr_w1_b"),
                                         found.get("lokr_w2"), found.get("lokr_w2_a"), found.get("lokr_w2_b"),
                                         found.get("lokr_t2"), alpha)
    elif "diff" in found:
        adapters["weight"] = DiffAdapter(found["diff"])
    if "diff_b" in found:
        adapters["bias"] = DiffAdapter(found["diff_b"])
    if not adapters:
        return {}, f"incomplete adapter (only {', '.join(sorted(found))})"
    return adapters, ""


def _has_lokr(found: Mapping[str, Tensor]) -> bool:
    first = "lokr_w1" in found or ("lokr_w1_a" in found and "lokr_w1_b" in found)
    second = "lokr_w2" in found or ("lokr_w2_a" in found and "lokr_w2_b" in found)
    return first and second
