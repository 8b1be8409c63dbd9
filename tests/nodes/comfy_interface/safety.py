"""SafeLatentDiffusion: Loom's own node (ComfyUI has no Safe Latent Diffusion node), so this table is
Loom's declared interface, pinned so that workflows saved with it keep working. The defaults are
diffusers' StableDiffusionPipelineSafe defaults (its default safety concept, the MEDIUM numbers)."""

from __future__ import annotations

from typing import Any

from nodes.safety import DEFAULT_SAFETY_CONCEPT

EXPECTED: dict[str, dict[str, Any]] = {
    "SafeLatentDiffusion": {
        "required": [
            ("model", "MODEL", {}),
            ("clip", "CLIP", {}),
            ("safety_concept", "STRING", {"default": DEFAULT_SAFETY_CONCEPT, "multiline": True}),
            ("preset", ["custom", "WEAK", "MEDIUM", "STRONG", "MAX"], {}),
            ("sld_guidance_scale", "FLOAT", {"default": 1000.0, "min": 0.0, "max": 10000.0, "step": 1.0}),
            ("sld_warmup_steps", "INT", {"default": 10, "min": 0, "max": 10000}),
            ("sld_threshold", "FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001}),
            ("sld_momentum_scale", "FLOAT", {"default": 0.3, "min": 0.0, "max": 10.0, "step": 0.01}),
            ("sld_mom_beta", "FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01}),
        ],
        "output": ["MODEL"],
    },
}
