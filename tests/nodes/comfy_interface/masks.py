"""ComfyUI's comfy_extras/nodes_mask.py interfaces (LatentCompositeMasked is with the latent nodes)."""

from __future__ import annotations

from typing import Any

MAX_RESOLUTION = 16384


def _int(default: int, low: int = 0, high: int = MAX_RESOLUTION) -> dict[str, Any]:
    return {"default": default, "min": low, "max": high, "step": 1}


EXPECTED: dict[str, dict[str, Any]] = {
    "ImageCompositeMasked": {
        "required": [("destination", "IMAGE", {}), ("source", "IMAGE", {}), ("x", "INT", _int(0)),
                     ("y", "INT", _int(0)), ("resize_source", "BOOLEAN", {"default": False})],
        "optional": [("mask", "MASK", {})],
        "output": ["IMAGE"],
    },
    "MaskToImage": {"required": [("mask", "MASK", {})], "output": ["IMAGE"]},
    "ImageToMask": {"required": [("image", "IMAGE", {}), ("channel", ["red", "green", "blue", "alpha"], {})],
                    "output": ["MASK"]},
    "ImageColorToMask": {
        "required": [("image", "IMAGE", {}), ("color", "INT", _int(0, 0, 0xFFFFFF))],
        "output": ["MASK"],
    },
    "SolidMask": {
        "required": [("value", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                     ("width", "INT", _int(512, 1)), ("height", "INT", _int(512, 1))],
        "output": ["MASK"],
    },
    "InvertMask": {"required": [("mask", "MASK", {})], "output": ["MASK"]},
    "CropMask": {
        "required": [("mask", "MASK", {}), ("x", "INT", _int(0)), ("y", "INT", _int(0)),
                     ("width", "INT", _int(512, 1)), ("height", "INT", _int(512, 1))],
        "output": ["MASK"],
    },
    "MaskComposite": {
        "required": [("destination", "MASK", {}), ("source", "MASK", {}), ("x", "INT", _int(0)),
                     ("y", "INT", _int(0)),
                     ("operation", ["multiply", "add", "subtract", "and", "or", "xor"], {})],
        "output": ["MASK"],
    },
    "FeatherMask": {
        "required": [("mask", "MASK", {}), ("left", "INT", _int(0)), ("top", "INT", _int(0)),
                     ("right", "INT", _int(0)), ("bottom", "INT", _int(0))],
        "output": ["MASK"],
    },
    "GrowMask": {
        "required": [("mask", "MASK", {}), ("expand", "INT", _int(0, -MAX_RESOLUTION)),
                     ("tapered_corners", "BOOLEAN", {"default": True})],
        "output": ["MASK"],
    },
    "ThresholdMask": {
        "required": [("mask", "MASK", {}), ("value", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})],
        "output": ["MASK"],
    },
    "MaskPreview": {"required": [("mask", "MASK", {})], "output": [], "output_node": True},
}
