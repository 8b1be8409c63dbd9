"""ComfyUI's interface for the latent transform and latent operation nodes (nodes.py's LatentRotate,
LatentFlip, LatentCrop, LatentBlend; comfy_extras/nodes_latent.py; nodes_rebatch.py's RebatchLatents;
nodes_mask.py's LatentCompositeMasked)."""

from __future__ import annotations

from typing import Any

MAX_RESOLUTION = 16384
SAMPLES: tuple[str, str, dict[str, Any]] = ("samples", "LATENT", {})
TWO_LATENTS: list[tuple[str, str, dict[str, Any]]] = [("samples1", "LATENT", {}), ("samples2", "LATENT", {})]
LATENT_OUT = {"output": ["LATENT"]}

EXPECTED: dict[str, dict[str, Any]] = {
    "LatentRotate": {
        "required": [SAMPLES, ("rotation", ["none", "90 degrees", "180 degrees", "270 degrees"], {})],
        **LATENT_OUT,
    },
    "LatentFlip": {
        "required": [SAMPLES, ("flip_method", ["x-axis: vertically", "y-axis: horizontally"], {})],
        **LATENT_OUT,
    },
    "LatentCrop": {
        "required": [SAMPLES,
                     ("width", "INT", {"default": 512, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
                     ("height", "INT", {"default": 512, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
                     ("x", "INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                     ("y", "INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})],
        **LATENT_OUT,
    },
    "LatentBlend": {
        "required": [*TWO_LATENTS, ("blend_factor", "FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01})],
        **LATENT_OUT,
    },
    "LatentSubtract": {"required": TWO_LATENTS, **LATENT_OUT},
    "LatentInterpolate": {
        "required": [*TWO_LATENTS, ("ratio", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})],
        **LATENT_OUT,
    },
    "LatentConcat": {
        "required": [*TWO_LATENTS, ("dim", ["x", "-x", "y", "-y", "t", "-t"], {})],
        **LATENT_OUT,
    },
    "LatentCut": {
        "required": [SAMPLES, ("dim", ["x", "y", "t"], {}),
                     ("index", "INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION, "step": 1}),
                     ("amount", "INT", {"default": 1, "min": 1, "max": MAX_RESOLUTION, "step": 1})],
        **LATENT_OUT,
    },
    "LatentBatchSeedBehavior": {
        "required": [SAMPLES, ("seed_behavior", ["random", "fixed"], {"default": "fixed"})],
        **LATENT_OUT,
    },
    "RebatchLatents": {
        "required": [("latents", "LATENT", {}), ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096})],
        "output": ["LATENT"],
        "output_is_list": [True],
    },
    "LatentCompositeMasked": {
        "required": [("destination", "LATENT", {}), ("source", "LATENT", {}),
                     ("x", "INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                     ("y", "INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                     ("resize_source", "BOOLEAN", {"default": False})],
        "optional": [("mask", "MASK", {})],
        **LATENT_OUT,
    },
    "LatentApplyOperation": {
        "required": [SAMPLES, ("operation", "LATENT_OPERATION", {})],
        **LATENT_OUT,
    },
    "LatentApplyOperationCFG": {
        "required": [("model", "MODEL", {}), ("operation", "LATENT_OPERATION", {})],
        "optional": [("start_percent", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                     ("end_percent", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})],
        "output": ["MODEL"],
    },
    "LatentOperationTonemapReinhard": {
        "required": [("multiplier", "FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})],
        "output": ["LATENT_OPERATION"],
    },
    "LatentOperationSharpen": {
        "required": [("sharpen_radius", "INT", {"default": 9, "min": 1, "max": 31, "step": 1}),
                     ("sigma", "FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
                     ("alpha", "FLOAT", {"default": 0.1, "min": 0.0, "max": 5.0, "step": 0.01})],
        "output": ["LATENT_OPERATION"],
    },
}
