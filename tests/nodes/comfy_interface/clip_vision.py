"""ComfyUI's interface for the CLIP vision, style model and unCLIP nodes (nodes.py)."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)

EXPECTED: dict[str, dict[str, Any]] = {
    "CLIPVisionLoader": {"required": [("clip_name", FILES, {})], "output": ["CLIP_VISION"]},
    "CLIPVisionEncode": {
        "required": [("clip_vision", "CLIP_VISION", {}), ("image", "IMAGE", {}), ("crop", ["center", "none"], {})],
        "output": ["CLIP_VISION_OUTPUT"],
    },
    "StyleModelLoader": {"required": [("style_model_name", FILES, {})], "output": ["STYLE_MODEL"]},
    "StyleModelApply": {
        "required": [
            ("conditioning", "CONDITIONING", {}),
            ("style_model", "STYLE_MODEL", {}),
            ("clip_vision_output", "CLIP_VISION_OUTPUT", {}),
            ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
            ("strength_type", ["multiply", "attn_bias"], {}),
        ],
        "output": ["CONDITIONING"],
    },
    "unCLIPCheckpointLoader": {"required": [("ckpt_name", FILES, {})],
                               "output": ["MODEL", "CLIP", "VAE", "CLIP_VISION"]},
    "unCLIPConditioning": {
        "required": [
            ("conditioning", "CONDITIONING", {}),
            ("clip_vision_output", "CLIP_VISION_OUTPUT", {}),
            ("strength", "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
            ("noise_augmentation", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        ],
        "output": ["CONDITIONING"],
    },
}
