"""ComfyUI's interface for InstructPixToPixConditioning (comfy_extras/nodes_ip2p.py) and SD_4XUpscale_Conditioning
(comfy_extras/nodes_sdupscale.py)."""

from __future__ import annotations

from typing import Any

EXPECTED: dict[str, dict[str, Any]] = {
    "InstructPixToPixConditioning": {
        "required": [
            ("positive", "CONDITIONING", {}),
            ("negative", "CONDITIONING", {}),
            ("vae", "VAE", {}),
            ("pixels", "IMAGE", {}),
        ],
        "output": ["CONDITIONING", "CONDITIONING", "LATENT"],
        "output_name": ["positive", "negative", "latent"],
    },
    "SD_4XUpscale_Conditioning": {
        "required": [
            ("images", "IMAGE", {}),
            ("positive", "CONDITIONING", {}),
            ("negative", "CONDITIONING", {}),
            ("scale_ratio", "FLOAT", {"default": 4.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            ("noise_augmentation", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        ],
        "output": ["CONDITIONING", "CONDITIONING", "LATENT"],
        "output_name": ["positive", "negative", "latent"],
    },
}
