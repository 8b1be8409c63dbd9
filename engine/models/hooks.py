"""Hooks: LoRAs that apply to some conditioning entries only, with a strength scheduled over the steps
(ComfyUI's "hooks" values: HOOKS, HOOK_KEYFRAMES, TIMESTEPS_RANGE). Torch-free values on edges.

* :class:`WeightHook`: a LoRA file with a model and a CLIP strength and its :class:`HookKeyframes`.
  ``ref`` identifies the hook (the node that made it): combining groups drops a hook already present, as
  ComfyUI compares hooks by reference, and keyframes set on a group keep the references.
* :class:`HookKeyframes`: keyframes (strength multiplier, start percent, guaranteed steps), kept sorted
  by start percent (stable). Without keyframes a hook's multiplier is 1.
* A conditioning entry with ``extras["hooks"]`` (a :class:`HookGroup`) is predicted by the UNet with the
  group's LoRAs patched in at their current strengths (engine/backend/hook_schedule.py); entries without
  hooks see the model as it is. ``extras["default"]`` marks an entry that fills only where the other
  entries of its side leave room (ConditioningSetDefaultCombine).
* A CLIP with hooks (SetClipHooks) encodes with the LoRAs' CLIP strengths; with ``schedule_clip`` it
  encodes once per keyframe range (:func:`clip_schedule`) into entries limited to those ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from engine.models.handles import FileRef

__all__ = ["INTERPOLATIONS", "HookGroup", "HookKeyframe", "HookKeyframes", "WeightHook", "clip_schedule",
           "combine_hooks", "interpolate"]

#: ComfyUI's interpolation methods for CreateHookKeyframesInterpolated.
INTERPOLATIONS = ("linear", "ease_in", "ease_out", "ease_in_out")


@dataclass(frozen=True)
class HookKeyframe:
    """From ``start_percent`` on, the hook's strengths are multiplied by ``strength``; the keyframe stays
    at least ``guarantee_steps`` steps once reached."""

    strength: float
    start_percent: float = 0.0
    guarantee_steps: int = 1


@dataclass(frozen=True)
class HookKeyframes:
    keyframes: tuple[HookKeyframe, ...] = ()

    def with_keyframe(self, keyframe: HookKeyframe) -> HookKeyframes:
        """One more keyframe, the list kept sorted by start percent (equal starts in the order added)."""
        return HookKeyframes(tuple(sorted((*self.keyframes, keyframe), key=lambda k: k.start_percent)))


@dataclass(frozen=True)
class WeightHook:
    """A LoRA applied as a hook: ``file`` at ``strength_model`` (UNet) and ``strength_clip`` (text encoder);
    ``kind`` "model": ``file`` is a checkpoint whose weights are used as a LoRA (CreateHookModelAsLora)."""

    ref: str
    file: FileRef
    strength_model: float = 1.0
    strength_clip: float = 1.0
    keyframes: HookKeyframes = HookKeyframes()
    kind: str = "lora"


@dataclass(frozen=True)
class HookGroup:
    hooks: tuple[WeightHook, ...] = ()

    def with_hooks(self, other: HookGroup | None) -> HookGroup:
        """This group and the hooks of ``other`` it does not already have (by reference)."""
        if other is None:
            return self
        refs = {hook.ref for hook in self.hooks}
        return HookGroup((*self.hooks, *(hook for hook in other.hooks if hook.ref not in refs)))

    def with_keyframes(self, keyframes: HookKeyframes | None) -> HookGroup:
        """Every hook with these keyframes (None: none, a multiplier of 1 throughout)."""
        return HookGroup(tuple(replace(hook, keyframes=keyframes or HookKeyframes()) for hook in self.hooks))


def combine_hooks(groups: list[HookGroup | None]) -> HookGroup | None:
    """CombineHooks: the groups given, in order, without repeated hooks (None when none is given)."""
    present = [group for group in groups if group is not None]
    if not present:
        return None
    combined = present[0]
    for group in present[1:]:
        combined = combined.with_hooks(group)
    return combined


def interpolate(start: float, end: float, count: int, method: str) -> list[float]:
    """``count`` values from ``start`` to ``end``: linear, or eased (quadratic in / out, cosine in-out)."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {method!r}; use one of {', '.join(INTERPOLATIONS)}")
    if count < 2:
        return [float(start)] * count
    values = []
    for index in range(count):
        t = index / (count - 1)
        if method == "ease_in":
            t = t * t
        elif method == "ease_out":
            t = 1 - (1 - t) ** 2
        elif method == "ease_in_out":
            t = (1 - math.cos(t * math.pi)) / 2
        values.append(start + (end - start) * t)
    return values


def _ranges(hook: WeightHook) -> list[tuple[tuple[float, float], float]]:
    """A hook's (start, end) percent ranges of constant multiplier."""
    keyframes = hook.keyframes.keyframes
    if not keyframes:
        return [((0.0, 1.0), 1.0)]
    out: list[tuple[tuple[float, float], float]] = []
    current = keyframes[0]
    for keyframe in keyframes:
        if keyframe.start_percent > current.start_percent and not math.isclose(keyframe.strength, current.strength):
            out.append(((current.start_percent, keyframe.start_percent), current.strength))
            current = keyframe
        elif keyframe.start_percent == current.start_percent:
            current = keyframe
    if not math.isclose(current.start_percent, 1.0):
        out.append(((current.start_percent, 1.0), current.strength))
    return out


def clip_schedule(group: HookGroup) -> list[tuple[tuple[float, float], dict[str, float]]]:
    """SetClipHooks' schedule_clip: the percent ranges over which every hook's multiplier is constant, each
    with the multiplier of each hook (by ref; 1 before a hook's first keyframe), as ComfyUI splits them."""
    per_hook = {hook.ref: _ranges(hook) for hook in group.hooks}
    bounds = sorted({0.0, *(edge for ranges in per_hook.values() for (span, _) in ranges for edge in span)})
    schedule = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        strengths = {}
        for ref, ranges in per_hook.items():
            strengths[ref] = next((value for (low, high), value in ranges if low < end and high > start), 1.0)
        schedule.append(((start, end), strengths))
    return schedule
