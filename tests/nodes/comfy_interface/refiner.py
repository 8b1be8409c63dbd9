"""ComfyUI's interface for CLIPTextEncodeSDXLRefiner (comfy_extras/nodes_clip_sdxl.py)."""

from __future__ import annotations

from typing import Any

MAX_RESOLUTION = 16384

EXPECTED: dict[str, dict[str, Any]] = {
    "CLIPTextEncodeSDXLRefiner": {
        "required": [
            ("ascore", "FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}),
            ("width", "INT", {"default": 1024, "min": 0, "max": MAX_RESOLUTION}),
            ("height", "INT", {"default": 1024, "min": 0, "max": MAX_RESOLUTION}),
            ("text", "STRING", {"multiline": True, "dynamicPrompts": True}),
            ("clip", "CLIP", {}),
        ],
        "output": ["CONDITIONING"],
    },
}
