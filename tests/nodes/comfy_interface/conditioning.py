"""ComfyUI's interface for the conditioning nodes of issue 16 (nodes.py: ConditioningAverage,
ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask, ConditioningSetTimestepRange)."""

from __future__ import annotations

from typing import Any

_STRENGTH = {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}
_FRACTION = {"min": 0, "max": 1.0, "step": 0.01}

EXPECTED: dict[str, dict[str, Any]] = {
    "ConditioningAverage": {
        "required": [
            ("conditioning_to", "CONDITIONING", {}),
            ("conditioning_from", "CONDITIONING", {}),
            ("conditioning_to_strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        ],
        "output": ["CONDITIONING"],
    },
    "ConditioningSetAreaPercentage": {
        "required": [
            ("conditioning", "CONDITIONING", {}),
            ("width", "FLOAT", {"default": 1.0, **_FRACTION}),
            ("height", "FLOAT", {"default": 1.0, **_FRACTION}),
            ("x", "FLOAT", {"default": 0, **_FRACTION}),
            ("y", "FLOAT", {"default": 0, **_FRACTION}),
            ("strength", "FLOAT", _STRENGTH),
        ],
        "output": ["CONDITIONING"],
    },
    "ConditioningSetAreaStrength": {
        "required": [("conditioning", "CONDITIONING", {}), ("strength", "FLOAT", _STRENGTH)],
        "output": ["CONDITIONING"],
    },
    "ConditioningSetMask": {
        "required": [
            ("conditioning", "CONDITIONING", {}),
            ("mask", "MASK", {}),
            ("strength", "FLOAT", _STRENGTH),
            ("set_cond_area", ["default", "mask bounds"], {}),
        ],
        "output": ["CONDITIONING"],
    },
    "ConditioningSetTimestepRange": {
        "required": [
            ("conditioning", "CONDITIONING", {}),
            ("start", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            ("end", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        ],
        "output": ["CONDITIONING"],
    },
}
