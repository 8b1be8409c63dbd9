"""ComfyUI's interface for the rectified-flow nodes: nodes_model_advanced.py's ModelSamplingSD3,
ModelSamplingAuraFlow and ModelSamplingFlux, nodes_sd3.py's EmptySD3LatentImage, nodes_flux.py's FluxGuidance."""

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
}
