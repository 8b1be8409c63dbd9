"""ComfyUI's interface for GLIGENLoader and GLIGENTextBoxApply (nodes.py)."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)
MAX_RESOLUTION = 16384

EXPECTED: dict[str, dict[str, Any]] = {
    "GLIGENLoader": {
        "required": [("gligen_name", FILES, {})],
        "output": ["GLIGEN"],
    },
    "GLIGENTextBoxApply": {
        "required": [
            ("conditioning_to", "CONDITIONING", {}), ("clip", "CLIP", {}), ("gligen_textbox_model", "GLIGEN", {}),
            ("text", "STRING", {"multiline": True, "dynamicPrompts": True}),
            ("width", "INT", {"default": 64, "min": 8, "max": MAX_RESOLUTION, "step": 8}),
            ("height", "INT", {"default": 64, "min": 8, "max": MAX_RESOLUTION, "step": 8}),
            ("x", "INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
            ("y", "INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
        ],
        "output": ["CONDITIONING"],
    },
}
