"""ComfyUI's interface for CheckpointSave, ModelSave, CLIPSave and VAESave (comfy_extras/nodes_model_merging.py).
The two optional inputs are Loom's own (dtype, include_workflow); ComfyUI has none."""

from __future__ import annotations

from typing import Any

LOOM_OPTIONS = [("dtype", ["fp16", "bf16", "fp32"], {"default": "fp16"}),
                ("include_workflow", "BOOLEAN", {"default": False})]


def _saver(required: list[tuple[str, Any, dict[str, Any]]]) -> dict[str, Any]:
    return {"required": required, "optional": LOOM_OPTIONS, "output": [], "output_name": [], "output_node": True}


EXPECTED: dict[str, dict[str, Any]] = {
    "CheckpointSave": _saver([("model", "MODEL", {}), ("clip", "CLIP", {}), ("vae", "VAE", {}),
                              ("filename_prefix", "STRING", {"default": "checkpoints/ComfyUI"})]),
    "ModelSave": _saver([("model", "MODEL", {}),
                         ("filename_prefix", "STRING", {"default": "diffusion_models/ComfyUI"})]),
    "CLIPSave": _saver([("clip", "CLIP", {}), ("filename_prefix", "STRING", {"default": "clip/ComfyUI"})]),
    "VAESave": _saver([("vae", "VAE", {}), ("filename_prefix", "STRING", {"default": "vae/ComfyUI_vae"})]),
}
