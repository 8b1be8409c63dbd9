"""ComfyUI's comfy_extras/nodes_compositing.py interfaces."""

from __future__ import annotations

from typing import Any

MODES = ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN", "MULTIPLY",
         "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"]

EXPECTED: dict[str, dict[str, Any]] = {
    "PorterDuffImageComposite": {
        "required": [("source", "IMAGE", {}), ("source_alpha", "MASK", {}), ("destination", "IMAGE", {}),
                     ("destination_alpha", "MASK", {}), ("mode", MODES, {"default": "DST"})],
        "output": ["IMAGE", "MASK"],
    },
    "SplitImageWithAlpha": {"required": [("image", "IMAGE", {})], "output": ["IMAGE", "MASK"]},
    "JoinImageWithAlpha": {"required": [("image", "IMAGE", {}), ("alpha", "MASK", {})], "output": ["IMAGE"]},
}
