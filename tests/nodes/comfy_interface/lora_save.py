"""ComfyUI's interface for LoraSave, "Extract and Save Lora" (comfy_extras/nodes_lora_extract.py)."""

from __future__ import annotations

from typing import Any

EXPECTED: dict[str, dict[str, Any]] = {
    "LoraSave": {
        "required": [("filename_prefix", "STRING", {"default": "loras/ComfyUI_extracted_lora"}),
                     ("rank", "INT", {"default": 8, "min": 1, "max": 4096, "step": 1}),
                     ("lora_type", ["standard", "full_diff"], {}),
                     ("bias_diff", "BOOLEAN", {"default": True})],
        "optional": [("model_diff", "MODEL", {"tooltip": "The ModelSubtract output to be converted to a lora."}),
                     ("text_encoder_diff", "CLIP",
                      {"tooltip": "The CLIPSubtract output to be converted to a lora."})],
        "output": [],
        "output_node": True,
    },
}
