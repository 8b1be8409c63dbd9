"""Hooks: LoRAs that apply to some conditioning only, scheduled over the steps (ComfyUI's hook nodes, with
its names, inputs and defaults).

Create (HOOKS): CreateHookLora, CreateHookLoraModelOnly, CreateHookModelAsLora(ModelOnly).
Schedule (HOOK_KEYFRAMES): CreateHookKeyframe, CreateHookKeyframesInterpolated, CreateHookKeyframesFromFloats,
SetHookKeyframes. Combine: CombineHooks2/4/8.
Attach: ConditioningSetProperties (+AndCombine), PairConditioningSetProperties (+AndCombine),
ConditioningSetDefaultCombine, PairConditioningSetDefaultCombine, PairConditioningCombine, SetClipHooks; and
ConditioningTimestepsRange (TIMESTEPS_RANGE). The values are engine/models/hooks.py's; sampling patches the
UNet per group of hooked entries and step (engine/backend/hook_schedule.py).

As in ComfyUI, ``strength`` of the set-properties nodes is the mask's strength (it does nothing without a
mask), and hooks set on entries that already have some are added to theirs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from engine.sdk import (
    BOOLEAN,
    CLIP,
    COMBO,
    CONDITIONING,
    FLOAT,
    INT,
    MASK,
    ClipHandle,
    FileRef,
    Input,
    Node,
    Output,
    RunContext,
)
from engine.sdk import hooks as hk
from nodes.lora import lora_ref

HOOKS = "HOOKS"
HOOK_KEYFRAMES = "HOOK_KEYFRAMES"
TIMESTEPS_RANGE = "TIMESTEPS_RANGE"
FLOATS = "FLOATS"
AREAS = ("default", "mask bounds")
Conditioning = list[list[Any]]
HookGroup = hk.HookGroup
HookKeyframes = hk.HookKeyframes


def _strength(name: str) -> Input:
    return Input(name, FLOAT, default=1.0, min=-20.0, max=20.0, step=0.01)


def _percent(name: str, default: float) -> Input:
    return Input(name, FLOAT, default=default, min=0.0, max=1.0, step=0.001)


# ------------------------------------------------------------------------------------------- creating


def _lora_hook(ctx: RunContext, lora_name: str, strength_model: float, strength_clip: float,
               prev_hooks: HookGroup | None) -> tuple[HookGroup]:
    previous = prev_hooks or HookGroup()
    if strength_model == 0 and strength_clip == 0:
        return (previous,)
    file: FileRef = lora_ref(ctx, lora_name)
    hook = hk.WeightHook(f"{ctx.prompt_id}:{ctx.node_id}:{lora_name}", file, float(strength_model),
                            float(strength_clip))
    return (previous.with_hooks(HookGroup((hook,))),)


_LORA = Input("lora_name", COMBO, choices=lambda folders: folders.list_models("loras"), file_folder="loras")
_PREV_HOOKS = Input("prev_hooks", HOOKS, optional=True)


class CreateHookLora(Node):
    """A hook of a LoRA file: it applies only to the conditioning it is attached to."""

    display_name = "Create Hook LoRA"
    category = "advanced/hooks/create"
    inputs = (_LORA, _strength("strength_model"), _strength("strength_clip"), _PREV_HOOKS)
    outputs = (Output(HOOKS),)

    def run(self, ctx: RunContext, lora_name: str, strength_model: float, strength_clip: float,
            prev_hooks: HookGroup | None = None) -> tuple[HookGroup]:
        return _lora_hook(ctx, lora_name, strength_model, strength_clip, prev_hooks)


def _model_hook(ctx: RunContext, ckpt_name: str, strength_model: float, strength_clip: float,
                prev_hooks: HookGroup | None) -> tuple[HookGroup]:
    previous = prev_hooks or HookGroup()
    if strength_model == 0 and strength_clip == 0:
        return (previous,)
    file = FileRef.of(ctx.folders.model_path("checkpoints", ckpt_name))
    hook = hk.WeightHook(f"{ctx.prompt_id}:{ctx.node_id}:{ckpt_name}", file, float(strength_model),
                         float(strength_clip), kind="model")
    return (previous.with_hooks(HookGroup((hook,))),)


_CKPT = Input("ckpt_name", COMBO, choices=lambda folders: folders.list_models("checkpoints"), file_folder="checkpoints")


class CreateHookModelAsLora(Node):
    """A hook that moves the model's weights toward another checkpoint's (strength 1: that checkpoint's
    weights) for the conditioning it is attached to."""

    display_name = "Create Hook Model as LoRA"
    category = "advanced/hooks/create"
    inputs = (_CKPT, _strength("strength_model"), _strength("strength_clip"), _PREV_HOOKS)
    outputs = (Output(HOOKS),)

    def run(self, ctx: RunContext, ckpt_name: str, strength_model: float, strength_clip: float,
            prev_hooks: HookGroup | None = None) -> tuple[HookGroup]:
        return _model_hook(ctx, ckpt_name, strength_model, strength_clip, prev_hooks)


class CreateHookModelAsLoraModelOnly(Node):
    """CreateHookModelAsLora for the diffusion model only."""

    display_name = "Create Hook Model as LoRA (MO)"
    category = "advanced/hooks/create"
    inputs = (_CKPT, _strength("strength_model"), _PREV_HOOKS)
    outputs = (Output(HOOKS),)

    def run(self, ctx: RunContext, ckpt_name: str, strength_model: float,
            prev_hooks: HookGroup | None = None) -> tuple[HookGroup]:
        return _model_hook(ctx, ckpt_name, strength_model, 0.0, prev_hooks)


class CreateHookLoraModelOnly(Node):
    """A hook of a LoRA file for the diffusion model only."""

    display_name = "Create Hook LoRA (MO)"
    category = "advanced/hooks/create"
    inputs = (_LORA, _strength("strength_model"), _PREV_HOOKS)
    outputs = (Output(HOOKS),)

    def run(self, ctx: RunContext, lora_name: str, strength_model: float,
            prev_hooks: HookGroup | None = None) -> tuple[HookGroup]:
        return _lora_hook(ctx, lora_name, strength_model, 0.0, prev_hooks)


# ----------------------------------------------------------------------------------------- scheduling

_PREV_KF = Input("prev_hook_kf", HOOK_KEYFRAMES, optional=True)


class SetHookKeyframes(Node):
    """Give every hook of a group these keyframes (none: a multiplier of 1 throughout)."""

    display_name = "Set Hook Keyframes"
    category = "advanced/hooks/scheduling"
    inputs = (Input("hooks", HOOKS), Input("hook_kf", HOOK_KEYFRAMES, optional=True))
    outputs = (Output(HOOKS),)

    def run(self, ctx: RunContext, hooks: HookGroup, hook_kf: HookKeyframes | None = None) -> tuple[HookGroup]:
        return (hooks if hook_kf is None else hooks.with_keyframes(hook_kf),)


class CreateHookKeyframe(Node):
    """From ``start_percent`` of the steps on, multiply the hooks' strengths by ``strength_mult``."""

    display_name = "Create Hook Keyframe"
    category = "advanced/hooks/scheduling"
    inputs = (Input("strength_mult", FLOAT, default=1.0, min=-20.0, max=20.0, step=0.01),
              _percent("start_percent", 0.0), _PREV_KF)
    outputs = (Output(HOOK_KEYFRAMES, "HOOK_KF"),)

    def run(self, ctx: RunContext, strength_mult: float, start_percent: float,
            prev_hook_kf: HookKeyframes | None = None) -> tuple[HookKeyframes]:
        keyframe = hk.HookKeyframe(float(strength_mult), float(start_percent))
        return ((prev_hook_kf or HookKeyframes()).with_keyframe(keyframe),)


def _spread(previous: HookKeyframes | None, strengths: Sequence[float], start: float, end: float,
            ctx: RunContext, show: bool) -> HookKeyframes:
    """Keyframes at evenly spaced starts from ``start`` to ``end``, the first guaranteed one step."""
    keyframes = previous or HookKeyframes()
    percents = hk.interpolate(start, end, len(strengths), "linear")
    for index, (percent, strength) in enumerate(zip(percents, strengths, strict=True)):
        keyframes = keyframes.with_keyframe(hk.HookKeyframe(float(strength), percent, 1 if index == 0 else 0))
        if show:
            ctx.log.info("Hook Keyframe - start_percent:%s = %s", percent, strength)
    return keyframes


class CreateHookKeyframesInterpolated(Node):
    """``keyframes_count`` keyframes from ``start_percent`` to ``end_percent``, strengths interpolated."""

    display_name = "Create Hook Keyframes Interp."
    category = "advanced/hooks/scheduling"
    inputs = (Input("strength_start", FLOAT, default=1.0, min=0.0, max=10.0, step=0.001),
              Input("strength_end", FLOAT, default=1.0, min=0.0, max=10.0, step=0.001),
              Input("interpolation", COMBO, choices=list(hk.INTERPOLATIONS)),
              _percent("start_percent", 0.0), _percent("end_percent", 1.0),
              Input("keyframes_count", INT, default=5, min=2, max=100, step=1),
              Input("print_keyframes", BOOLEAN, default=False), _PREV_KF)
    outputs = (Output(HOOK_KEYFRAMES, "HOOK_KF"),)

    def run(self, ctx: RunContext, strength_start: float, strength_end: float, interpolation: str,
            start_percent: float, end_percent: float, keyframes_count: int, print_keyframes: bool = False,
            prev_hook_kf: HookKeyframes | None = None) -> tuple[HookKeyframes]:
        strengths = hk.interpolate(strength_start, strength_end, keyframes_count, interpolation)
        return (_spread(prev_hook_kf, strengths, start_percent, end_percent, ctx, print_keyframes),)


class CreateHookKeyframesFromFloats(Node):
    """One keyframe per value of ``floats_strength``, evenly spaced from ``start_percent`` to ``end_percent``."""

    display_name = "Create Hook Keyframes From Floats"
    category = "advanced/hooks/scheduling"
    inputs = (Input("floats_strength", FLOATS, default=-1, min=-1, step=0.001, extra={"forceInput": True}),
              _percent("start_percent", 0.0), _percent("end_percent", 1.0),
              Input("print_keyframes", BOOLEAN, default=False), _PREV_KF)
    outputs = (Output(HOOK_KEYFRAMES, "HOOK_KF"),)

    def run(self, ctx: RunContext, floats_strength: Any, start_percent: float, end_percent: float,
            print_keyframes: bool = False, prev_hook_kf: HookKeyframes | None = None) -> tuple[HookKeyframes]:
        if isinstance(floats_strength, int | float):
            values = [float(floats_strength)]
        elif isinstance(floats_strength, Sequence) or hasattr(floats_strength, "tolist"):
            values = [float(v) for v in (floats_strength.tolist() if hasattr(floats_strength, "tolist")
                                          else floats_strength)]
        else:
            raise ValueError(f"CreateHookKeyframesFromFloats: floats_strength must be a number or a list of numbers, "
                             f"not {type(floats_strength).__name__}")
        return (_spread(prev_hook_kf, values, start_percent, end_percent, ctx, print_keyframes),)


# ------------------------------------------------------------------------------------------ combining


def _combine_node(count: int, letters: str) -> type[Node]:
    names = [f"hooks_{letter}" for letter in letters[:count]]

    class CombineHooks(Node):
        category = "advanced/hooks/combine"
        inputs = tuple(Input(name, HOOKS, optional=True) for name in names)
        outputs = (Output(HOOKS),)

        def run(self, ctx: RunContext, **groups: HookGroup | None) -> tuple[HookGroup | None]:
            return (hk.combine_hooks([groups.get(name) for name in names]),)

    CombineHooks.__name__ = CombineHooks.__qualname__ = f"CombineHooks{count}"
    CombineHooks.__doc__ = f"Combine up to {count} hook groups (a hook in several counts once)."
    CombineHooks.display_name = f"Combine Hooks [{count}]"
    return CombineHooks


CombineHooks2 = _combine_node(2, "ABCDEFGH")
CombineHooks4 = _combine_node(4, "ABCDEFGH")
CombineHooks8 = _combine_node(8, "ABCDEFGH")


# ----------------------------------------------------------------------------------------- attaching


def _values(cond: Conditioning, values: dict[str, Any]) -> Conditioning:
    return [[embedding, {**extras, **values}] for embedding, extras in cond]


def _with_hooks(cond: Conditioning, group: HookGroup | None) -> Conditioning:
    if group is None:
        return cond
    out = []
    for embedding, extras in cond:
        existing = extras.get("hooks")
        out.append([embedding, {**extras, "hooks": group if existing is None else existing.with_hooks(group)}])
    return out


def _set_properties(cond: Conditioning, strength: float, set_cond_area: str, mask: Any, group: HookGroup | None,
                    timesteps: tuple[float, float] | None) -> Conditioning:
    """ComfyUI's set_conds_props for one conditioning: hooks added, then the mask (with its strength and area
    rule), then the timestep range."""
    if set_cond_area not in AREAS:
        raise ValueError(f"set_cond_area must be one of {', '.join(AREAS)}, not {set_cond_area!r}")
    cond = _with_hooks(cond, group)
    if mask is not None:
        cond = _values(cond, {"mask": mask if mask.ndim >= 3 else mask.unsqueeze(0),
                              "set_area_to_bounds": set_cond_area != "default", "mask_strength": float(strength)})
    if timesteps is not None:
        cond = _values(cond, {"start_percent": float(timesteps[0]), "end_percent": float(timesteps[1])})
    return cond


def _properties_inputs(*conds: str) -> tuple[Input, ...]:
    return (*(Input(name, CONDITIONING) for name in conds),
            Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
            Input("set_cond_area", COMBO, choices=list(AREAS)),
            Input("mask", MASK, optional=True), Input("hooks", HOOKS, optional=True),
            Input("timesteps", TIMESTEPS_RANGE, optional=True))


class ConditioningSetProperties(Node):
    """Attach hooks, a mask (with its strength) and a timestep range to a conditioning."""

    display_name = "Cond Set Props"
    category = "advanced/hooks/cond single"
    inputs = _properties_inputs("cond_NEW")
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, cond_NEW: Conditioning, strength: float, set_cond_area: str,  # noqa: N803
            mask: Any = None, hooks: HookGroup | None = None,
            timesteps: tuple[float, float] | None = None) -> tuple[Conditioning]:
        return (_set_properties(cond_NEW, strength, set_cond_area, mask, hooks, timesteps),)


class ConditioningSetPropertiesAndCombine(Node):
    """ConditioningSetProperties on ``cond_NEW``, then combined with ``cond``."""

    display_name = "Cond Set Props Combine"
    category = "advanced/hooks/cond single"
    inputs = _properties_inputs("cond", "cond_NEW")
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, cond: Conditioning, cond_NEW: Conditioning, strength: float,  # noqa: N803
            set_cond_area: str, mask: Any = None, hooks: HookGroup | None = None,
            timesteps: tuple[float, float] | None = None) -> tuple[Conditioning]:
        return ([*cond, *_set_properties(cond_NEW, strength, set_cond_area, mask, hooks, timesteps)],)


class PairConditioningSetProperties(Node):
    """ConditioningSetProperties on a positive and a negative conditioning alike."""

    display_name = "Cond Pair Set Props"
    category = "advanced/hooks/cond pair"
    inputs = _properties_inputs("positive_NEW", "negative_NEW")
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def run(self, ctx: RunContext, positive_NEW: Conditioning, negative_NEW: Conditioning,  # noqa: N803
            strength: float, set_cond_area: str, mask: Any = None, hooks: HookGroup | None = None,
            timesteps: tuple[float, float] | None = None) -> tuple[Conditioning, Conditioning]:
        return (_set_properties(positive_NEW, strength, set_cond_area, mask, hooks, timesteps),
                _set_properties(negative_NEW, strength, set_cond_area, mask, hooks, timesteps))


class PairConditioningSetPropertiesAndCombine(Node):
    """PairConditioningSetProperties on the new pair, each combined with its side of the first pair."""

    display_name = "Cond Pair Set Props Combine"
    category = "advanced/hooks/cond pair"
    inputs = _properties_inputs("positive", "negative", "positive_NEW", "negative_NEW")
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def run(self, ctx: RunContext, positive: Conditioning, negative: Conditioning,
            positive_NEW: Conditioning, negative_NEW: Conditioning, strength: float,  # noqa: N803
            set_cond_area: str, mask: Any = None, hooks: HookGroup | None = None,
            timesteps: tuple[float, float] | None = None) -> tuple[Conditioning, Conditioning]:
        return ([*positive, *_set_properties(positive_NEW, strength, set_cond_area, mask, hooks, timesteps)],
                [*negative, *_set_properties(negative_NEW, strength, set_cond_area, mask, hooks, timesteps)])


def _default(cond: Conditioning, group: HookGroup | None) -> Conditioning:
    return _values(_with_hooks(cond, group), {"default": True})


class ConditioningSetDefaultCombine(Node):
    """Add ``cond_DEFAULT``, which weighs in only where the other entries leave room (e.g. outside masks)."""

    type_name = "ConditioningSetDefaultCombine"
    display_name = "Cond Set Default Combine"
    category = "advanced/hooks/cond single"
    inputs = (Input("cond", CONDITIONING), Input("cond_DEFAULT", CONDITIONING), Input("hooks", HOOKS, optional=True))
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, cond: Conditioning, cond_DEFAULT: Conditioning,  # noqa: N803
            hooks: HookGroup | None = None) -> tuple[Conditioning]:
        return ([*cond, *_default(cond_DEFAULT, hooks)],)


class PairConditioningSetDefaultCombine(Node):
    """ConditioningSetDefaultCombine on a positive and a negative pair."""

    type_name = "PairConditioningSetDefaultCombine"
    display_name = "Cond Pair Set Default Combine"
    category = "advanced/hooks/cond pair"
    inputs = (Input("positive", CONDITIONING), Input("negative", CONDITIONING),
              Input("positive_DEFAULT", CONDITIONING), Input("negative_DEFAULT", CONDITIONING),
              Input("hooks", HOOKS, optional=True))
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def run(self, ctx: RunContext, positive: Conditioning, negative: Conditioning,
            positive_DEFAULT: Conditioning, negative_DEFAULT: Conditioning,  # noqa: N803
            hooks: HookGroup | None = None) -> tuple[Conditioning, Conditioning]:
        return [*positive, *_default(positive_DEFAULT, hooks)], [*negative, *_default(negative_DEFAULT, hooks)]


class PairConditioningCombine(Node):
    """Combine two positive/negative pairs side by side."""

    display_name = "Cond Pair Combine"
    category = "advanced/hooks/cond pair"
    inputs = (Input("positive_A", CONDITIONING), Input("negative_A", CONDITIONING),
              Input("positive_B", CONDITIONING), Input("negative_B", CONDITIONING))
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def run(self, ctx: RunContext, positive_A: Conditioning, negative_A: Conditioning,  # noqa: N803
            positive_B: Conditioning, negative_B: Conditioning) -> tuple[Conditioning, Conditioning]:  # noqa: N803
        return [*positive_A, *positive_B], [*negative_A, *negative_B]


class SetClipHooks(Node):
    """Encode with the hooks' LoRAs (CLIP strengths); ``apply_to_conds`` also puts the hooks on what this CLIP
    encodes, ``schedule_clip`` encodes once per keyframe range."""

    display_name = "Set CLIP Hooks"
    category = "advanced/hooks/clip"
    inputs = (Input("clip", CLIP), Input("apply_to_conds", BOOLEAN, default=True),
              Input("schedule_clip", BOOLEAN, default=False), Input("hooks", HOOKS, optional=True))
    outputs = (Output(CLIP),)

    def run(self, ctx: RunContext, clip: ClipHandle, apply_to_conds: bool, schedule_clip: bool,
            hooks: HookGroup | None = None) -> tuple[ClipHandle]:
        if hooks is None:
            return (clip,)
        return (dataclasses.replace(clip, hooks=hooks, hooks_to_conds=bool(apply_to_conds),
                                    schedule_clip=bool(schedule_clip)),)


class ConditioningTimestepsRange(Node):
    """A step range (start, end percent), and the ranges before and after it."""

    display_name = "Timesteps Range"
    category = "advanced/hooks"
    inputs = (_percent("start_percent", 0.0), _percent("end_percent", 1.0))
    outputs = (Output(TIMESTEPS_RANGE, "TIMESTEPS_RANGE"), Output(TIMESTEPS_RANGE, "BEFORE_RANGE"),
               Output(TIMESTEPS_RANGE, "AFTER_RANGE"))

    def run(self, ctx: RunContext, start_percent: float, end_percent: float
            ) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        return (start_percent, end_percent), (0.0, start_percent), (end_percent, 1.0)


HOOK_NODES: tuple[type[Node], ...] = (
    CreateHookLora, CreateHookLoraModelOnly, CreateHookModelAsLora, CreateHookModelAsLoraModelOnly, SetHookKeyframes,
    CreateHookKeyframe, CreateHookKeyframesInterpolated, CreateHookKeyframesFromFloats, CombineHooks2, CombineHooks4,
    CombineHooks8, ConditioningSetProperties, ConditioningSetPropertiesAndCombine, PairConditioningSetProperties,
    PairConditioningSetPropertiesAndCombine, ConditioningSetDefaultCombine, PairConditioningSetDefaultCombine,
    PairConditioningCombine, SetClipHooks, ConditioningTimestepsRange,
)
