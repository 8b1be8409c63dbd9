"""ComfyUI's interface for the part loaders (nodes.py): UNETLoader, CLIPLoader, DualCLIPLoader, CheckpointLoader,
DiffusersLoader. The CLIPLoader / DualCLIPLoader type lists are those of one ComfyUI release (the 19 and 12 types
of late 2025); Loom loads stable_diffusion, sdxl, sd3 and flux and names the others as not supported yet."""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)

CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis",
              "longcat_image"]
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
                   "kandinsky5", "kandinsky5_image", "ltxv", "newbie", "ace"]
DEVICE = ("device", ["default", "cpu"], {"advanced": True})

EXPECTED: dict[str, dict[str, Any]] = {
    "UNETLoader": {
        "required": [("unet_name", FILES, {}),
                     ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {})],
        "output": ["MODEL"],
    },
    "CLIPLoader": {
        "required": [("clip_name", FILES, {}), ("type", CLIP_TYPES, {})],
        "optional": [DEVICE],
        "output": ["CLIP"],
    },
    "DualCLIPLoader": {
        "required": [("clip_name1", FILES, {}), ("clip_name2", FILES, {}), ("type", DUAL_CLIP_TYPES, {})],
        "optional": [DEVICE],
        "output": ["CLIP"],
    },
    "CheckpointLoader": {
        "required": [("config_name", FILES, {}), ("ckpt_name", FILES, {})],
        "output": ["MODEL", "CLIP", "VAE"],
    },
    "DiffusersLoader": {"required": [("model_path", FILES, {})], "output": ["MODEL", "CLIP", "VAE"]},
}
