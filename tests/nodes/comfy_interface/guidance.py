"""ComfyUI's interface for the guidance patch nodes (comfy_extras/nodes_model_advanced.py RescaleCFG,
nodes_cfg.py CFGZeroStar / CFGNorm, nodes_apg.py, nodes_tcfg.py, nodes_mahiro.py, nodes_fresca.py,
nodes_perpneg.py PerpNeg, nodes_differential_diffusion.py)."""

from __future__ import annotations

from typing import Any

MODEL_IN: tuple[str, str, dict[str, Any]] = ("model", "MODEL", {})
PATCHED = {"output": ["MODEL"], "output_name": ["patched_model"]}
MODEL_OUT = {"output": ["MODEL"], "output_name": ["MODEL"]}

EXPECTED: dict[str, dict[str, Any]] = {
    "RescaleCFG": {
        "required": [MODEL_IN, ("multiplier", "FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01})],
        **MODEL_OUT,
    },
    "CFGZeroStar": {"required": [MODEL_IN], **PATCHED},
    "CFGNorm": {
        "required": [MODEL_IN, ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})],
        **PATCHED,
    },
    "APG": {
        "required": [MODEL_IN,
                     ("eta", "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                     ("norm_threshold", "FLOAT", {"default": 5.0, "min": 0.0, "max": 50.0, "step": 0.1}),
                     ("momentum", "FLOAT", {"default": 0.0, "min": -5.0, "max": 1.0, "step": 0.01})],
        **MODEL_OUT,
    },
    "TCFG": {"required": [MODEL_IN], **PATCHED},
    "Mahiro": {"required": [MODEL_IN], **PATCHED},
    "FreSca": {
        "required": [MODEL_IN,
                     ("scale_low", "FLOAT", {"default": 1.0, "min": 0, "max": 10, "step": 0.01}),
                     ("scale_high", "FLOAT", {"default": 1.25, "min": 0, "max": 10, "step": 0.01}),
                     ("freq_cutoff", "INT", {"default": 20, "min": 1, "max": 10000, "step": 1})],
        **MODEL_OUT,
    },
    "PerpNeg": {
        "required": [MODEL_IN, ("empty_conditioning", "CONDITIONING", {}),
                     ("neg_scale", "FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})],
        **MODEL_OUT,
    },
    "DifferentialDiffusion": {
        "required": [MODEL_IN],
        "optional": [("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})],
        **MODEL_OUT,
    },
}
