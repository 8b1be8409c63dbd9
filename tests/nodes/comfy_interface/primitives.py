"""ComfyUI's interface for the primitive nodes (comfy_extras/nodes_primitive.py) and PreviewAny
(comfy_extras/nodes_preview_any.py)."""

from __future__ import annotations

from typing import Any

MAXSIZE = 9223372036854775807  # sys.maxsize on 64-bit Python, ComfyUI's bound for PrimitiveInt/Float

EXPECTED: dict[str, dict[str, Any]] = {
    "PrimitiveString": {
        "required": [("value", "STRING", {"multiline": False})],
        "output": ["STRING"],
    },
    "PrimitiveStringMultiline": {
        "required": [("value", "STRING", {"multiline": True})],
        "output": ["STRING"],
    },
    "PrimitiveInt": {
        "required": [("value", "INT", {"min": -MAXSIZE, "max": MAXSIZE, "control_after_generate": True})],
        "output": ["INT"],
    },
    "PrimitiveFloat": {
        "required": [("value", "FLOAT", {"min": -MAXSIZE, "max": MAXSIZE, "step": 0.1})],
        "output": ["FLOAT"],
    },
    "PrimitiveBoolean": {
        "required": [("value", "BOOLEAN", {})],
        "output": ["BOOLEAN"],
    },
    "PreviewAny": {
        "required": [("source", "*", {})],
        "output": ["STRING"],
        "output_node": True,
    },
}
