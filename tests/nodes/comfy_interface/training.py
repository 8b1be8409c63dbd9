"""ComfyUI's interface for its training nodes (comfy_extras/nodes_train.py): TrainLoraNode, LoraModelLoader,
SaveLoRANode, LossGraphNode, LoadImageSetFromFolderNode and LoadImageTextSetFromFolderNode. TrainLoraNode's
optional inputs are Loom's additions (class prior preservation)."""

from __future__ import annotations

from typing import Any

FILES = "FILES"
DTYPES = ["bf16", "fp32"]
RESIZE = ("resize_method", ["None", "Stretch", "Crop", "Pad"], {"default": "None"})

EXPECTED: dict[str, dict[str, Any]] = {
    "TrainLoraNode": {
        "required": [
            ("model", "MODEL", {}),
            ("latents", "LATENT", {}),
            ("positive", "CONDITIONING", {}),
            ("batch_size", "INT", {"default": 1, "min": 1, "max": 10000, "step": 1}),
            ("grad_accumulation_steps", "INT", {"default": 1, "min": 1, "max": 1024, "step": 1}),
            ("steps", "INT", {"default": 16, "min": 1, "max": 100000}),
            ("learning_rate", "FLOAT", {"default": 0.0005, "min": 0.0000001, "max": 1.0, "step": 0.000001}),
            ("rank", "INT", {"default": 8, "min": 1, "max": 128}),
            ("optimizer", ["AdamW", "Adam", "SGD", "RMSprop"], {"default": "AdamW"}),
            ("loss_function", ["MSE", "L1", "Huber", "SmoothL1"], {"default": "MSE"}),
            ("seed", "INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            ("training_dtype", DTYPES, {"default": "bf16"}),
            ("lora_dtype", DTYPES, {"default": "bf16"}),
            ("algorithm", ["LoRA", "LoHa", "LoKr", "OFT"], {"default": "LoRA"}),
            ("gradient_checkpointing", "BOOLEAN", {"default": True}),
            ("existing_lora", FILES, {"default": "[None]"}),
        ],
        "optional": [
            ("class_latents", "LATENT", {}),
            ("class_positive", "CONDITIONING", {}),
            ("prior_loss_weight", "FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
        ],
        "output": ["MODEL", "LORA_MODEL", "LOSS_MAP", "INT"],
        "output_name": ["model_with_lora", "lora", "loss", "steps"],
    },
    "LoraModelLoader": {
        "required": [("model", "MODEL", {}), ("lora", "LORA_MODEL", {}),
                     ("strength_model", "FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})],
        "output": ["MODEL"],
    },
    "SaveLoRANode": {
        "required": [("lora", "LORA_MODEL", {}), ("prefix", "STRING", {"default": "loras/ComfyUI_trained_lora"})],
        "optional": [("steps", "INT", {"forceInput": True})],
        "output": [],
        "output_node": True,
    },
    "LossGraphNode": {
        "required": [("loss", "LOSS_MAP", {}), ("filename_prefix", "STRING", {"default": "loss_graph"})],
        "output": [],
        "output_node": True,
    },
    "LoadImageSetFromFolderNode": {
        "required": [("folder", FILES, {})],
        "optional": [RESIZE],
        "output": ["IMAGE"],
    },
    "LoadImageTextSetFromFolderNode": {
        "required": [("folder", FILES, {}), ("clip", "CLIP", {})],
        "optional": [RESIZE, ("width", "INT", {"default": -1, "min": -1, "max": 10000, "step": 1}),
                     ("height", "INT", {"default": -1, "min": -1, "max": 10000, "step": 1})],
        "output": ["IMAGE", "CONDITIONING"],
    },
}
