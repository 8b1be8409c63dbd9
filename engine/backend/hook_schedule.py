"""Hook keyframes during one sampling run, and the UNet weights each group of hooked entries needs.

A hook (``engine.models.hooks.WeightHook``: a LoRA ``file`` with ``strength_model`` and sorted ``keyframes``,
each ``strength`` / ``start_percent`` / ``guarantee_steps``) is followed step by step as ComfyUI's
HookKeyframeGroup: keyframe starts are turned into sigmas with the model sampling's ``percent_to_sigma``;
at each new sigma, once the current keyframe has been used for its guaranteed steps, the run moves on to
the last of the following keyframes whose start sigma is at or above the sigma (stopping early at one that
guarantees steps). The first keyframe applies from the start. The UNet then runs each group of entries
with the group's LoRAs at ``strength_model * multiplier`` on top of the model's own patches, through
``apply(extra)``, the model owner's way of patching (engine/models/patching.py: exact restore); entries
without hooks run with ``apply(())``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["HookRunner"]

#: (file, strength, kind) patched on top of the model's own patches: kind "lora" (a LoRA file) or "model" (a
#: checkpoint used as a LoRA).
ExtraPatches = tuple[tuple[Any, float, str], ...]


class _KeyframeState:
    def __init__(self, keyframes: Sequence[Any], percent_to_sigma: Callable[[float], float]) -> None:
        self.keyframes = list(keyframes)
        self.starts = [percent_to_sigma(float(k.start_percent)) for k in self.keyframes]
        self.index = 0
        self.used = 0
        self.sigma: float | None = None

    @property
    def multiplier(self) -> float:
        return float(self.keyframes[self.index].strength) if self.keyframes else 1.0

    def step(self, sigma: float) -> None:
        if not self.keyframes or sigma == self.sigma:
            return
        if self.used >= int(self.keyframes[self.index].guarantee_steps):
            for index in range(self.index + 1, len(self.keyframes)):
                if self.starts[index] < sigma:
                    break
                self.index, self.used = index, 0
                if int(self.keyframes[index].guarantee_steps) > 0:
                    break
        self.used += 1
        self.sigma = sigma


class HookRunner:
    """The keyframe state of every hook in a run, and the patching of the UNet for each group of entries."""

    def __init__(self, apply: Callable[[ExtraPatches], None], percent_to_sigma: Callable[[float], float]) -> None:
        self._apply = apply
        self._percent_to_sigma = percent_to_sigma
        self._states: dict[str, _KeyframeState] = {}
        self._applied: ExtraPatches = ()  # runs without hooks never call apply

    def _state(self, hook: Any) -> _KeyframeState:
        state = self._states.get(hook.ref)
        if state is None:
            state = _KeyframeState(hook.keyframes.keyframes, self._percent_to_sigma)
            self._states[hook.ref] = state
        return state

    def step(self, sigma: float, groups: Iterable[Any]) -> None:
        """Advance the keyframes of every hook in ``groups`` to the step at ``sigma``."""
        for group in groups:
            for hook in group.hooks:
                self._state(hook).step(sigma)

    def patches(self, group: Any | None) -> ExtraPatches:
        """The LoRAs of ``group`` at their current strengths (zero strengths left out)."""
        if group is None:
            return ()
        extra = []
        for hook in group.hooks:
            strength = float(hook.strength_model) * self._state(hook).multiplier
            if strength:
                extra.append((hook.file, strength, str(getattr(hook, "kind", "lora"))))
        return tuple(extra)

    def use(self, group: Any | None) -> None:
        """Patch the UNet for ``group`` (None: the model as it is), unless it already is."""
        extra = self.patches(group)
        if extra != self._applied:
            self._apply(extra)
            self._applied = extra

    def finish(self) -> None:
        """Back to the model's own patches."""
        if self._applied:
            self._apply(())
        self._applied = ()
