"""ComfyUI's interface for DiffControlNetLoader (nodes.py)."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)

EXPECTED: dict[str, dict[str, Any]] = {
    "DiffControlNetLoader": {
        "required": [("model", "MODEL", {}), ("control_net_name", FILES, {})],
        "output": ["CONTROL_NET"],
        "output_name": ["CONTROL_NET"],
    },
}
