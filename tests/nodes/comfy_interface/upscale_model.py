"""UpscaleModelLoader and ImageUpscaleWithModel: ComfyUI's comfy_extras/nodes_upscale_model.py interface."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)

EXPECTED: dict[str, dict[str, Any]] = {
    "UpscaleModelLoader": {
        "required": [("model_name", FILES, {})],
        "output": ["UPSCALE_MODEL"],
    },
    "ImageUpscaleWithModel": {
        "required": [("upscale_model", "UPSCALE_MODEL", {}), ("image", "IMAGE", {})],
        "output": ["IMAGE"],
    },
}
