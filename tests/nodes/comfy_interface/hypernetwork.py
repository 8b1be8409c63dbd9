"""ComfyUI's interface for HypernetworkLoader (comfy_extras/nodes_hypernetwork.py)."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)

EXPECTED: dict[str, dict[str, Any]] = {
    "HypernetworkLoader": {
        "required": [("model", "MODEL", {}), ("hypernetwork_name", FILES, {}),
                     ("strength", "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})],
        "output": ["MODEL"],
        "output_name": ["MODEL"],
    },
}
