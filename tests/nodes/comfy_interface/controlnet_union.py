"""ComfyUI's interface for SetUnionControlNetType (comfy_extras/nodes_controlnet.py)."""

from __future__ import annotations

from typing import Any

EXPECTED: dict[str, dict[str, Any]] = {
    "SetUnionControlNetType": {
        "required": [("control_net", "CONTROL_NET", {}),
                     ("type", ["auto", "openpose", "depth", "hed/pidi/scribble/ted",
                               "canny/lineart/anime_lineart/mlsd", "normal", "segment", "tile", "repaint"], {})],
        "output": ["CONTROL_NET"],
        "output_name": ["CONTROL_NET"],
    },
}
