"""ComfyUI's interface for the SD3 / Flux text nodes: nodes_sd3.py's TripleCLIPLoader and CLIPTextEncodeSD3,
nodes_flux.py's CLIPTextEncodeFlux."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)
CLIP: tuple[str, str, dict[str, Any]] = ("clip", "CLIP", {})


def _prompt(name: str) -> tuple[str, str, dict[str, Any]]:
    return (name, "STRING", {"multiline": True, "dynamicPrompts": True})


EXPECTED: dict[str, dict[str, Any]] = {
    "TripleCLIPLoader": {
        "required": [("clip_name1", FILES, {}), ("clip_name2", FILES, {}), ("clip_name3", FILES, {})],
        "optional": [],
        "output": ["CLIP"],
    },
    "CLIPTextEncodeSD3": {
        "required": [CLIP, _prompt("clip_l"), _prompt("clip_g"), _prompt("t5xxl"),
                     ("empty_padding", ["none", "empty_prompt"], {})],
        "optional": [],
        "output": ["CONDITIONING"],
    },
    "CLIPTextEncodeFlux": {
        "required": [CLIP, _prompt("clip_l"), _prompt("t5xxl"),
                     ("guidance", "FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})],
        "optional": [],
        "output": ["CONDITIONING"],
    },
}
