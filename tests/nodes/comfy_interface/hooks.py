"""ComfyUI's interface for the hook nodes (comfy_extras/nodes_hooks.py)."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)
STRENGTH = {"default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01}
PERCENT_0 = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}
PERCENT_1 = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}
PROPS = [("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
         ("set_cond_area", ["default", "mask bounds"], {})]
PROPS_OPTIONAL = [("mask", "MASK", {}), ("hooks", "HOOKS", {}), ("timesteps", "TIMESTEPS_RANGE", {})]
PAIR = {"output": ["CONDITIONING", "CONDITIONING"], "output_name": ["positive", "negative"]}
SINGLE = {"output": ["CONDITIONING"], "output_name": ["CONDITIONING"]}
HOOKS_OUT = {"output": ["HOOKS"], "output_name": ["HOOKS"]}
KF_OUT = {"output": ["HOOK_KEYFRAMES"], "output_name": ["HOOK_KF"]}


def _conds(*names: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [(name, "CONDITIONING", {}) for name in names]


def _combine(letters: str) -> dict[str, Any]:
    return {"required": [], "optional": [(f"hooks_{letter}", "HOOKS", {}) for letter in letters], **HOOKS_OUT}


EXPECTED: dict[str, dict[str, Any]] = {
    "CreateHookLora": {"required": [("lora_name", FILES, {}), ("strength_model", "FLOAT", STRENGTH),
                                    ("strength_clip", "FLOAT", STRENGTH)],
                       "optional": [("prev_hooks", "HOOKS", {})], **HOOKS_OUT},
    "CreateHookLoraModelOnly": {"required": [("lora_name", FILES, {}), ("strength_model", "FLOAT", STRENGTH)],
                                "optional": [("prev_hooks", "HOOKS", {})], **HOOKS_OUT},
    "CreateHookModelAsLora": {"required": [("ckpt_name", FILES, {}), ("strength_model", "FLOAT", STRENGTH),
                                           ("strength_clip", "FLOAT", STRENGTH)],
                              "optional": [("prev_hooks", "HOOKS", {})], **HOOKS_OUT},
    "CreateHookModelAsLoraModelOnly": {"required": [("ckpt_name", FILES, {}), ("strength_model", "FLOAT", STRENGTH)],
                                       "optional": [("prev_hooks", "HOOKS", {})], **HOOKS_OUT},
    "SetHookKeyframes": {"required": [("hooks", "HOOKS", {})], "optional": [("hook_kf", "HOOK_KEYFRAMES", {})],
                         **HOOKS_OUT},
    "CreateHookKeyframe": {"required": [("strength_mult", "FLOAT", STRENGTH), ("start_percent", "FLOAT", PERCENT_0)],
                           "optional": [("prev_hook_kf", "HOOK_KEYFRAMES", {})], **KF_OUT},
    "CreateHookKeyframesInterpolated": {
        "required": [("strength_start", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
                     ("strength_end", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
                     ("interpolation", ["linear", "ease_in", "ease_out", "ease_in_out"], {}),
                     ("start_percent", "FLOAT", PERCENT_0), ("end_percent", "FLOAT", PERCENT_1),
                     ("keyframes_count", "INT", {"default": 5, "min": 2, "max": 100, "step": 1}),
                     ("print_keyframes", "BOOLEAN", {"default": False})],
        "optional": [("prev_hook_kf", "HOOK_KEYFRAMES", {})], **KF_OUT},
    "CreateHookKeyframesFromFloats": {
        "required": [("floats_strength", "FLOATS", {"default": -1, "min": -1, "step": 0.001, "forceInput": True}),
                     ("start_percent", "FLOAT", PERCENT_0), ("end_percent", "FLOAT", PERCENT_1),
                     ("print_keyframes", "BOOLEAN", {"default": False})],
        "optional": [("prev_hook_kf", "HOOK_KEYFRAMES", {})], **KF_OUT},
    "CombineHooks2": _combine("AB"),
    "CombineHooks4": _combine("ABCD"),
    "CombineHooks8": _combine("ABCDEFGH"),
    "ConditioningSetProperties": {"required": [*_conds("cond_NEW"), *PROPS], "optional": PROPS_OPTIONAL, **SINGLE},
    "ConditioningSetPropertiesAndCombine": {"required": [*_conds("cond", "cond_NEW"), *PROPS],
                                            "optional": PROPS_OPTIONAL, **SINGLE},
    "PairConditioningSetProperties": {"required": [*_conds("positive_NEW", "negative_NEW"), *PROPS],
                                      "optional": PROPS_OPTIONAL, **PAIR},
    "PairConditioningSetPropertiesAndCombine": {
        "required": [*_conds("positive", "negative", "positive_NEW", "negative_NEW"), *PROPS],
        "optional": PROPS_OPTIONAL, **PAIR},
    "ConditioningSetDefaultCombine": {"required": _conds("cond", "cond_DEFAULT"),
                                      "optional": [("hooks", "HOOKS", {})], **SINGLE},
    "PairConditioningSetDefaultCombine": {
        "required": _conds("positive", "negative", "positive_DEFAULT", "negative_DEFAULT"),
        "optional": [("hooks", "HOOKS", {})], **PAIR},
    "PairConditioningCombine": {"required": _conds("positive_A", "negative_A", "positive_B", "negative_B"), **PAIR},
    "SetClipHooks": {"required": [("clip", "CLIP", {}), ("apply_to_conds", "BOOLEAN", {"default": True}),
                                  ("schedule_clip", "BOOLEAN", {"default": False})],
                     "optional": [("hooks", "HOOKS", {})], "output": ["CLIP"], "output_name": ["CLIP"]},
    "ConditioningTimestepsRange": {"required": [("start_percent", "FLOAT", PERCENT_0),
                                                ("end_percent", "FLOAT", PERCENT_1)],
                                   "output": ["TIMESTEPS_RANGE"] * 3,
                                   "output_name": ["TIMESTEPS_RANGE", "BEFORE_RANGE", "AFTER_RANGE"]},
}
