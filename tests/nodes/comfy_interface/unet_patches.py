"""ComfyUI's interface for the UNet patch nodes of issue 17 (comfy_extras nodes_freelunch.py,
nodes_model_downscale.py, nodes_hypertile.py, nodes_tomesd.py, nodes_attention_multiply.py,
nodes_torch_compile.py, nodes_sag.py, nodes_pag.py)."""

from __future__ import annotations

from typing import Any

_FACTOR = {"min": 0.0, "max": 10.0, "step": 0.01}
_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]


def _freeu(b1: float, b2: float) -> dict[str, Any]:
    return {
        "required": [
            ("model", "MODEL", {}),
            ("b1", "FLOAT", {"default": b1, **_FACTOR}),
            ("b2", "FLOAT", {"default": b2, **_FACTOR}),
            ("s1", "FLOAT", {"default": 0.9, **_FACTOR}),
            ("s2", "FLOAT", {"default": 0.2, **_FACTOR}),
        ],
        "output": ["MODEL"],
    }


def _multiply(first: tuple[str, str]) -> dict[str, Any]:
    return {
        "required": [
            (first[0], first[1], {}),
            *((name, "FLOAT", {"default": 1.0, **_FACTOR}) for name in ("q", "k", "v", "out")),
        ],
        "output": [first[1]],
    }


EXPECTED: dict[str, dict[str, Any]] = {
    "FreeU": _freeu(1.1, 1.2),
    "FreeU_V2": _freeu(1.3, 1.4),
    "PatchModelAddDownscale": {
        "required": [
            ("model", "MODEL", {}),
            ("block_number", "INT", {"default": 3, "min": 1, "max": 32, "step": 1}),
            ("downscale_factor", "FLOAT", {"default": 2.0, "min": 0.1, "max": 9.0, "step": 0.001}),
            ("start_percent", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            ("end_percent", "FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.001}),
            ("downscale_after_skip", "BOOLEAN", {"default": True}),
            ("downscale_method", _METHODS, {}),
            ("upscale_method", _METHODS, {}),
        ],
        "output": ["MODEL"],
    },
    "HyperTile": {
        "required": [
            ("model", "MODEL", {}),
            ("tile_size", "INT", {"default": 256, "min": 1, "max": 2048}),
            ("swap_size", "INT", {"default": 2, "min": 1, "max": 128}),
            ("max_depth", "INT", {"default": 0, "min": 0, "max": 10}),
            ("scale_depth", "BOOLEAN", {"default": False}),
        ],
        "output": ["MODEL"],
    },
    "TomePatchModel": {
        "required": [
            ("model", "MODEL", {}),
            ("ratio", "FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01}),
        ],
        "output": ["MODEL"],
    },
    "UNetSelfAttentionMultiply": _multiply(("model", "MODEL")),
    "UNetCrossAttentionMultiply": _multiply(("model", "MODEL")),
    "CLIPAttentionMultiply": _multiply(("clip", "CLIP")),
    "TorchCompileModel": {
        "required": [("model", "MODEL", {}), ("backend", ["inductor", "cudagraphs"], {})],
        "output": ["MODEL"],
    },
    "SelfAttentionGuidance": {
        "required": [
            ("model", "MODEL", {}),
            ("scale", "FLOAT", {"default": 0.5, "min": -2.0, "max": 5.0, "step": 0.01}),
            ("blur_sigma", "FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1}),
        ],
        "output": ["MODEL"],
    },
    "PerturbedAttentionGuidance": {
        "required": [
            ("model", "MODEL", {}),
            ("scale", "FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        ],
        "output": ["MODEL"],
    },
}
