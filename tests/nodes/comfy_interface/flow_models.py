"""ComfyUI's interface for the rectified-flow nodes: nodes_model_advanced.py's ModelSamplingSD3,
ModelSamplingAuraFlow and ModelSamplingFlux, nodes_sd3.py's EmptySD3LatentImage and SkipLayerGuidanceSD3,
nodes_flux.py's FluxGuidance, nodes_slg.py's SkipLayerGuidanceDiT."""

from __future__ import annotations

from typing import Any

MAX_RESOLUTION = 16384
MODEL: tuple[str, str, dict[str, Any]] = ("model", "MODEL", {})


def _shift(default: float) -> tuple[str, str, dict[str, Any]]:
    return ("shift", "FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.01})


EXPECTED: dict[str, dict[str, Any]] = {
    "ModelSamplingSD3": {"required": [MODEL, _shift(3.0)], "optional": [], "output": ["MODEL"]},
    "ModelSamplingAuraFlow": {"required": [MODEL, _shift(1.73)], "optional": [], "output": ["MODEL"]},
    "ModelSamplingFlux": {"required": [
        MODEL,
        ("max_shift", "FLOAT", {"default": 1.15, "min": 0.0, "max": 100.0, "step": 0.01}),
        ("base_shift", "FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0, "step": 0.01}),
        ("width", "INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
        ("height", "INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
    ], "optional": [], "output": ["MODEL"]},
    "EmptySD3LatentImage": {"required": [
        ("width", "INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
        ("height", "INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
        ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096}),
    ], "optional": [], "output": ["LATENT"]},
    "FluxGuidance": {"required": [
        ("conditioning", "CONDITIONING", {}),
        ("guidance", "FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1}),
    ], "optional": [], "output": ["CONDITIONING"]},
    "SkipLayerGuidanceDiT": {"required": [
        MODEL,
        ("double_layers", "STRING", {"default": "7, 8, 9"}),
        ("single_layers", "STRING", {"default": "7, 8, 9"}),
        ("scale", "FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0, "step": 0.1}),
        ("start_percent", "FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001}),
        ("end_percent", "FLOAT", {"default": 0.15, "min": 0.0, "max": 1.0, "step": 0.001}),
        ("rescaling_scale", "FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01}),
    ], "optional": [], "output": ["MODEL"]},
    "SkipLayerGuidanceSD3": {"required": [
        MODEL,
        ("layers", "STRING", {"default": "7, 8, 9", "multiline": False}),
        ("scale", "FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0, "step": 0.1}),
        ("start_percent", "FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001}),
        ("end_percent", "FLOAT", {"default": 0.15, "min": 0.0, "max": 1.0, "step": 0.001}),
    ], "optional": [], "output": ["MODEL"]},
}
