"""Reversible weight patches: LoRA files applied to loaded modules (never to a copy), with strengths.

A MODEL or CLIP handle lists its patches (``WeightPatch(file, strength)``, in order). The
ModelManager hands every module it returns (a UNet, a text encoder, an SD3/SD3.5 MMDiT or a Flux.1
transformer) to :meth:`LoraPatcher.apply` with the handle's patches;
the patcher makes the module's weights exactly ``original + sum(strength * scale * delta)`` for
that list and remembers what is applied:

* a patched weight is a new tensor swapped in as the parameter's data; the original tensor is kept
  aside (the backup) and swapped back when another patch list is asked for, so the originals come
  back bit for bit, without a copy, and only the patched weights ever exist twice;
* deltas are computed in float32 (one fused ``addmm`` per LoRA target for float32 weights;
  float16/bfloat16 weights are widened, patched and rounded once);
* parsed LoRA files are kept by :class:`~engine.models.handles.FileRef` (a few files, least recently
  used out), so changing a strength re-reads nothing; the ``FileRef``'s size and mtime make an
  edited file a different entry;
* keys that match nothing are named in one warning per file and model part; a LoRA made for another
  model family raises :class:`~engine.errors.LoraMismatch` before any weight is touched.

File formats and adapter arithmetic: engine/models/lora_formats.py; key names: engine/models/lora_keys.py
(UNet, text encoders) and engine/models/lora_flow_keys.py (SD3, Flux: separate q/k/v of a fused weight land on
its rows); resolving a file against a model and the family checks: engine/models/lora_plan.py and
engine/models/lora_families.py.
A module is not re-entrant: the manager serialises ``apply`` and nodes use the module it returns
before asking for the same module with other patches.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import ModelError
from engine.models.handles import FileRef, WeightPatch
from engine.models.loaders import CheckpointFile, UnsupportedModel
from engine.models.lora_formats import Adapter, ModelDiffAdapter, ParsedLora, parse_lora
from engine.models.lora_keys import kohya_text_key, kohya_unet_key
from engine.models.lora_plan import ModelPart, PatchPlan, build_plan, describe_part
from engine.models.model_as_lora import model_plan

__all__ = [
    "LoraCache",
    "LoraPatcher",
    "ModelPart",
    "PatchPlan",
    "build_plan",
    "describe_part",
    "kohya_text_key",
    "kohya_unet_key",
    "read_lora",
]

log = logging.getLogger(__name__)


def read_lora(ref: FileRef) -> ParsedLora:
    """Read and parse a LoRA file (safetensors, or a pickle through ``weights_only``).

    Floating tensors are widened to float32 once here, so applying the LoRA again (another strength,
    another patch list) converts nothing.
    """
    path = Path(ref.path)
    if not path.is_file():
        raise ModelError(f"LoRA file {ref.name} is no longer at {ref.path}; put it back or pick another LoRA")
    try:
        with CheckpointFile(path) as lora:
            tensors = {key: lora.load(key, torch.float32) for key in lora.keys()}
    except UnsupportedModel as exc:
        raise ModelError(f"LoRA file {ref.name} cannot be read: {exc}") from exc
    parsed = parse_lora(tensors)
    unsupported = sorted({why for why in parsed.unused.values() if why.startswith("unsupported")})
    if not parsed.adapters and unsupported:
        raise ModelError(f"{ref.name} uses a LoRA variant Loom does not apply yet: {'; '.join(unsupported)}")
    if not parsed.adapters:
        sample = ", ".join(sorted(tensors)[:5]) or "no tensors"
        raise ModelError(f"{ref.name} holds no LoRA weights (no lora_up/lora_down, lora_A/lora_B, hada_, lokr_ or "
                         f"diff keys; found {sample}); pick a LoRA file from models/loras")
    log.info("read LoRA %s: %d targets", ref.name, len(parsed.adapters))
    return parsed


class LoraCache:
    """Parsed LoRA files by FileRef, least recently used out beyond ``max_files`` files or ``max_bytes``
    (the newest file always stays); counts file reads."""

    def __init__(self, max_files: int = 4, max_bytes: int = 4 << 30) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._files: OrderedDict[FileRef, ParsedLora] = OrderedDict()
        self._bytes: dict[FileRef, int] = {}
        self.reads = 0
        self.hits = 0

    def get(self, ref: FileRef) -> ParsedLora:
        parsed = self._files.get(ref)
        if parsed is not None:
            self._files.move_to_end(ref)
            self.hits += 1
            return parsed
        parsed = read_lora(ref)
        self.reads += 1
        self._files[ref] = parsed
        self._bytes[ref] = parsed.nbytes
        while len(self._files) > 1 and (len(self._files) > self.max_files
                                        or sum(self._bytes.values()) > self.max_bytes):
            evicted, _ = self._files.popitem(last=False)
            del self._bytes[evicted]
        return parsed

    def stats(self) -> dict[str, int]:
        return {"files": len(self._files), "reads": self.reads, "hits": self.hits,
                "bytes": sum(self._bytes.values())}


@dataclass
class _ModuleState:
    part: ModelPart
    plans: OrderedDict[tuple[FileRef, str], PatchPlan] = field(default_factory=OrderedDict)
    applied: tuple[tuple[FileRef, float, str], ...] = ()
    backups: dict[str, Tensor] = field(default_factory=dict)  # parameter name -> original tensor
    spare: dict[str, Tensor] = field(default_factory=dict)  # parameter name -> reusable patched buffer


class LoraPatcher:
    """Applies the patches of a handle to a loaded module, reversibly (see the module docstring).

    A patched weight is a new tensor (``original + deltas``, one fused ``addmm`` for a LoRA) swapped
    in as the parameter's data; the original tensor itself is kept aside and swapped back on restore,
    so restoring is exact and copies nothing. ``backup_device`` (e.g. ``"cpu"`` to spare GPU memory)
    keeps the originals elsewhere instead; they are then copied back.

    With ``reuse_buffers`` the patched tensors of a restored patch list are kept as spare buffers and
    written into the next time the same weights are patched, so switching strengths or LoRAs allocates
    nothing (fresh allocations cost page faults that dominate on CPUs). The price is that memory
    (the size of the patched weights) staying held after a restore; :meth:`release_buffers` frees it.
    One patcher per ModelManager; modules are tracked weakly, so an unloaded module takes its state.
    """

    def __init__(self, max_files: int = 4, backup_device: torch.device | str | None = None,
                 reuse_buffers: bool = True) -> None:
        self.files = LoraCache(max_files)
        self.backup_device = torch.device(backup_device) if backup_device is not None else None
        self.reuse_buffers = reuse_buffers
        self._states: weakref.WeakKeyDictionary[nn.Module, _ModuleState] = weakref.WeakKeyDictionary()

    def apply(self, module: nn.Module, patches: Sequence[WeightPatch], family_label: str) -> None:
        """Make ``module``'s weights its originals plus exactly ``patches`` (strength 0 adds nothing)."""
        wanted = _wanted(patches)
        state = self._state(module, wanted, family_label)
        if state is None or state.applied == wanted:
            return
        # may raise; nothing is touched yet
        contributions = self._contributions(state, wanted)
        params = dict(module.named_parameters())
        scales = _weight_scales(module)
        with torch.no_grad(), torch.inference_mode(False):  # patched weights must be normal tensors
            self._restore(state, params)
            try:
                self._patch(state, params, contributions, scales)
            except Exception:
                self._restore(state, params)
                raise
        state.applied = wanted
        log.debug("%s: applied %d LoRA(s) to %d weights", state.part.label, len(wanted), len(contributions))

    def pending(self, module: nn.Module, patches: Sequence[WeightPatch], family_label: str) -> set[str]:
        """Names of the parameters that :meth:`apply` with ``patches`` would change (restored or patched);
        nothing is changed. Raises what ``apply`` would raise for a LoRA that does not fit."""
        wanted = _wanted(patches)
        state = self._state(module, wanted, family_label)
        if state is None or state.applied == wanted:
            return set()
        return set(state.backups) | set(self._contributions(state, wanted))

    def _state(self, module: nn.Module, wanted: tuple[tuple[FileRef, float, str], ...],
               family_label: str) -> _ModuleState | None:
        """``module``'s state, made when there is something to patch (None when nothing ever was)."""
        state = self._states.get(module)
        if state is None and wanted:
            state = _ModuleState(describe_part(module, family_label))
            self._states[module] = state
        return state

    def _contributions(self, state: _ModuleState,
                       wanted: tuple[tuple[FileRef, float, str], ...]) -> dict[str, list[tuple[Adapter, float]]]:
        return _contributions([(self._plan(state, ref, kind), strength) for ref, strength, kind in wanted])

    def restore(self, module: nn.Module) -> None:
        """Put the original weights back (e.g. before the module is moved to another device)."""
        state = self._states.get(module)
        if state is not None:
            with torch.no_grad(), torch.inference_mode(False):
                self._restore(state, dict(module.named_parameters()))

    def release_buffers(self) -> None:
        """Free the spare buffers kept for re-patching (see ``reuse_buffers``)."""
        for state in self._states.values():
            state.spare = {}

    def applied(self, module: nn.Module) -> tuple[tuple[FileRef, float], ...]:
        """The (file, strength) list now applied to ``module``."""
        state = self._states.get(module)
        return tuple((ref, strength) for ref, strength, _ in state.applied) if state is not None else ()

    def stats(self) -> dict[str, Any]:
        return {**self.files.stats(), "patched_modules": sum(1 for s in self._states.values() if s.applied)}

    def _plan(self, state: _ModuleState, ref: FileRef, kind: str = "lora") -> PatchPlan:
        plan = state.plans.get((ref, kind))
        if plan is not None:
            state.plans.move_to_end((ref, kind))
            return plan
        if kind == "model":
            plan = model_plan(ref, state.part)
        else:
            plan = build_plan(self.files.get(ref), ref.name, state.part)
        state.plans[(ref, kind)] = plan
        while len(state.plans) > self.files.max_files:
            state.plans.popitem(last=False)
        return plan

    def _restore(self, state: _ModuleState, params: Mapping[str, nn.Parameter]) -> None:
        for name, original in state.backups.items():
            param = params[name]
            if self.reuse_buffers:
                state.spare[name] = param.data
            same = original.device == param.device and original.dtype == param.dtype
            param.data = original if same else original.to(device=param.device, dtype=param.dtype)
        state.backups = {}
        state.applied = ()

    def _patch(self, state: _ModuleState, params: Mapping[str, nn.Parameter],
               contributions: Mapping[str, list[tuple[Adapter, float]]], scales: Mapping[str, Tensor]) -> None:
        for name, items in contributions.items():
            param = params[name]
            original = param.data
            spare = state.spare.pop(name, None)
            fits_spare = spare is not None and (spare.shape, spare.dtype, spare.device) == (
                original.shape, original.dtype, original.device) and spare.is_contiguous()
            patched = _patched(original, items, spare if fits_spare else None, scales.get(name))
            state.backups[name] = original if self.backup_device is None else original.to(self.backup_device, copy=True)
            param.data = patched


def _wanted(patches: Sequence[WeightPatch]) -> tuple[tuple[FileRef, float, str], ...]:
    """The (file, strength, kind) list a patch list asks for; strength 0 adds nothing."""
    return tuple((patch.file, float(patch.strength), patch.kind) for patch in patches if patch.strength != 0)


def _weight_scales(module: nn.Module) -> dict[str, Tensor]:
    """``layer.weight`` -> the layer's ``weight_scale`` (scaled-fp8 weights: the weight is stored / scale)."""
    return {f"{name}.weight" if name else "weight": scale for name, layer in module.named_modules()
            if isinstance(scale := layer._buffers.get("weight_scale"), Tensor)}


def _patched(original: Tensor, items: Sequence[tuple[Adapter, float]], out: Tensor | None,
             scale: Tensor | None = None) -> Tensor:
    """``original`` plus every contribution, computed in float32, in the original dtype, written into
    ``out`` (same shape and dtype) or a new tensor; ``original`` is only read. A scaled-fp8 weight (``scale``)
    is patched as ``original * scale`` and stored divided by the scale again."""
    if scale is not None:
        scale = scale.float().reshape(-1, *([1] * (original.ndim - 1))) if scale.numel() > 1 else scale.float()
    if original.dtype == torch.float32 and scale is None:
        (first, strength), rest = items[0], items[1:]
        result = first.added(original, strength, out)  # reads the original, writes the result: one pass
    else:
        result, rest = original.float(), items
        if scale is not None:
            result = result * scale
    relative = None  # the float32 original, for a model used as a LoRA after other patches
    for adapter, strength in rest:
        if isinstance(adapter, ModelDiffAdapter):
            if relative is None:
                relative = original.float() if scale is None else original.float() * scale
            adapter.add_to_patched(result, relative, strength)
        else:
            adapter.add_to(result, strength)
    if scale is not None:
        result = result / scale
    if result.dtype == original.dtype:
        return result
    return result.to(original.dtype) if out is None else out.copy_(result)


def _contributions(plans: Sequence[tuple[PatchPlan, float]]) -> dict[str, list[tuple[Adapter, float]]]:
    """Parameter name -> its (adapter, strength) list, in patch order."""
    out: dict[str, list[tuple[Adapter, float]]] = {}
    for plan, strength in plans:
        for name, adapter in plan.targets.items():
            out.setdefault(name, []).append((adapter, strength))
    return out
