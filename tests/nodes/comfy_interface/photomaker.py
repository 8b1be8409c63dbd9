"""ComfyUI's interface for PhotoMakerLoader and PhotoMakerEncode (comfy_extras/nodes_photomaker.py)."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)

EXPECTED: dict[str, dict[str, Any]] = {
    "PhotoMakerLoader": {"required": [("photomaker_model_name", FILES, {})], "output": ["PHOTOMAKER"]},
    "PhotoMakerEncode": {
        "required": [
            ("photomaker", "PHOTOMAKER", {}),
            ("image", "IMAGE", {}),
            ("clip", "CLIP", {}),
            ("text", "STRING", {"multiline": True, "dynamicPrompts": True, "default": "photograph of photomaker"}),
        ],
        "output": ["CONDITIONING"],
    },
}
