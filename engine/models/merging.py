"""Merged weights: what the ModelMerge* and CLIPMerge* nodes describe (a :class:`MergeSpec` on a handle),
computed only when a node first needs the module.

UNet, one weight at a time: :func:`unet_weights` turns a handle into a :class:`WeightSource` (parameter
names, shapes and ``tensor(name)`` in float32): the file's tensor (memory-mapped), plus the handle's LoRA
patches (baked in, as ComfyUI bakes them into a merge's inputs), or for a merged handle
``self_scale * base + other_scale * other`` of its two inputs, recursively. :func:`load_merged_unet` reads
every weight through the source once into a meta-built UNet, so building a merge holds the merged model
plus one weight of each input, never a second model.

Text encoders, module by module (they are the small part of a checkpoint): :func:`merge_text_encoders`
blends the parameters of the base's text encoder (already built with its own merge and patches) with the
other's, which the caller drops afterwards.

ComfyUI's semantics (facts of its node definitions): a weight becomes ``strength_model * own +
strength_patch * other's``; weights the other model lacks, or has in another shape, stay as they are
(ComfyUI warns of a shape mismatch, e.g. an inpainting model's 9-channel first conv); CLIP merges leave
``position_ids`` and ``logit_scale`` alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import Protocol

import torch
from torch import Tensor, nn

from engine.backend.unet import UNetConfig, UNetModel, load_weights
from engine.errors import ModelError
from engine.models import parts
from engine.models.flow_models import build_flow_model
from engine.models.handles import ClipHandle, MergeSpec, ModelHandle, WeightPatch
from engine.models.loaders import CheckpointFile
from engine.models.lora_formats import Adapter
from engine.models.lora_plan import build_plan, describe_part
from engine.models.patching import LoraCache
from engine.models.weight_storage import model_shapes

__all__ = ["WeightSource", "check_same_family", "load_merged_unet", "merge_text_encoders", "unet_weights"]

log = logging.getLogger(__name__)


class WeightSource(Protocol):
    """The UNet weights of a handle, by Loom's (LDM) names, each computed in float32 when asked for (a new
    tensor the caller may change)."""

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def tensor(self, name: str) -> Tensor: ...


class _FileWeights:
    """A UNet's tensors as stored (checkpoint, UNet file or diffusers layout), read one at a time."""

    def __init__(self, ckpt: CheckpointFile, handle: ModelHandle) -> None:
        self._ckpt = ckpt
        self._keys = parts.unet_keys(ckpt, handle.unet_layout)
        self.shapes = {name: ckpt.shape(key) for name, key in self._keys.items()}

    def tensor(self, name: str) -> Tensor:
        # A copy the caller owns: a pickled file hands out the same tensor on every read.
        return self._ckpt.load(self._keys[name]).to(torch.float32, copy=True)


class _PatchedWeights:
    """Another source's weights with LoRA patches added (``strength * delta`` per target)."""

    def __init__(self, source: WeightSource, targets: Mapping[str, Sequence[tuple[Adapter, float]]]) -> None:
        self._source = source
        self._targets = targets
        self.shapes = source.shapes

    def tensor(self, name: str) -> Tensor:
        weight = self._source.tensor(name)
        for adapter, strength in self._targets.get(name, ()):
            adapter.add_to(weight, strength)  # sources hand out tensors of their own
        return weight


class _MergedWeights:
    """``self_scale * base + other_scale * other`` per weight (see :class:`MergeSpec`)."""

    def __init__(self, base: WeightSource, other: WeightSource, spec: MergeSpec, label: str) -> None:
        self._base, self._other, self._spec = base, other, spec
        self.shapes = base.shapes
        mismatched = [name for name, shape in base.shapes.items()
                      if name in other.shapes and other.shapes[name] != shape]
        if mismatched:
            log.warning("%s: %d weight(s) have another shape in the second model and keep the first model's "
                        "(e.g. %s)", label, len(mismatched), ", ".join(mismatched[:3]))
        self._mismatched = set(mismatched)

    def tensor(self, name: str) -> Tensor:
        weight = self._base.tensor(name)
        if name not in self._other.shapes or name in self._mismatched or self._spec.skips(name):
            return weight
        self_scale, other_scale = self._spec.scales(name)
        merged = self._other.tensor(name) * other_scale
        return merged.add_(weight, alpha=self_scale) if self_scale else merged


def unet_weights(handle: ModelHandle, files: ExitStack, loras: LoraCache, *, patched: bool = True) -> WeightSource:
    """The weight source of ``handle``'s UNet; ``patched=False`` leaves out its own LoRA patches (the model
    manager applies those reversibly on the built module). Files are opened into ``files``."""
    if handle.merge is None:
        ckpt = files.enter_context(CheckpointFile(handle.checkpoint.path))
        source: WeightSource = _FileWeights(ckpt, handle)
    else:
        spec = handle.merge
        label = f"merge of {spec.base.checkpoint.name} and {spec.other.checkpoint.name}"
        source = _MergedWeights(unet_weights(spec.base, files, loras), unet_weights(spec.other, files, loras),
                                spec, label)
    if patched and any(patch.strength for patch in handle.patches):
        source = _PatchedWeights(source, _lora_targets(handle.patches, source, handle.family.label, loras))
    return source


def _lora_targets(patches: Sequence[WeightPatch], source: WeightSource, family_label: str,
                  loras: LoraCache) -> dict[str, list[tuple[Adapter, float]]]:
    """Parameter name -> (adapter, strength) of every patch, resolved against a meta-built UNet of the source."""
    with torch.device("meta"):
        model = UNetModel(UNetConfig.from_state_dict(source.shapes))
    part = describe_part(model, family_label)
    targets: dict[str, list[tuple[Adapter, float]]] = {}
    for patch in patches:
        if not patch.strength:
            continue
        plan = build_plan(loras.get(patch.file), patch.file.name, part)
        for name, adapter in plan.targets.items():
            targets.setdefault(name, []).append((adapter, float(patch.strength)))
    return targets


def load_merged_unet(handle: ModelHandle, loras: LoraCache, *, device: torch.device,
                     dtype: torch.dtype) -> nn.Module:
    """Build the diffusion model (UNet, MMDiT or Flux) of a merged ``handle`` (its own patches left to the
    caller), one weight at a time."""
    if handle.merge is None:
        raise ValueError("load_merged_unet needs a handle with a merge")
    with ExitStack() as files:
        source = unet_weights(handle, files, loras, patched=False)
        shapes = model_shapes(source.shapes)
        if len(shapes) != len(source.shapes):
            raise ModelError(f"{handle.checkpoint.name}: merging scaled-fp8 files is not supported; merge the "
                             "fp16/bf16 release of the model")
        model: nn.Module
        if handle.family.is_flow:  # an SD3/Flux transformer: merged in the compute dtype like a UNet
            model = build_flow_model(handle.family, shapes)
        else:
            with torch.device("meta"):
                model = UNetModel(UNetConfig.from_state_dict(shapes))
        load_weights(model, _each(source, shapes), device=device, dtype=dtype)
    return model.requires_grad_(False).eval()


def _each(source: WeightSource, shapes: Mapping[str, tuple[int, ...]]) -> Iterator[tuple[str, Tensor]]:
    for name in shapes:
        yield name, source.tensor(name)


def merge_text_encoders(base: nn.Module, other: nn.Module, spec: MergeSpec, handle: ClipHandle) -> None:
    """Blend ``other``'s parameters into ``base``'s in place (float32 arithmetic, the base's dtype kept)."""
    theirs = dict(other.named_parameters())
    kept: list[str] = []
    with torch.no_grad(), torch.inference_mode(False):
        for name, param in base.named_parameters():
            source = theirs.get(name)
            if source is None or spec.skips(name):
                continue
            if source.shape != param.shape:
                kept.append(name)
                continue
            self_scale, other_scale = spec.scales(name)
            merged = source.detach().float() * other_scale
            merged.add_(param.detach().float(), alpha=self_scale)
            param.data = merged.to(param.dtype)
    if kept:
        log.warning("CLIP merge of %s: %d weight(s) have another shape in the second text encoder and keep the "
                    "first's (e.g. %s)", handle.checkpoint.name, len(kept), ", ".join(kept[:3]))


def check_same_family(first: str, second: str, node: str, what: str) -> None:
    """Refuse merging models of two families (their weights do not correspond)."""
    if first != second:
        raise ModelError(f"{node}: the first {what} is {first} but the second is {second}; merge {what}s of one "
                         "family (SD1.x with SD1.x, SDXL with SDXL, ...)")
