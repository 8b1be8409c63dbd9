"""ComfyUI's LoadImageOutput (nodes.py), SaveAnimatedWEBP / SaveAnimatedPNG (comfy_extras/nodes_images.py),
SaveImageWebsocket (custom_nodes/websocket_image_save.py) and WebcamCapture (comfy_extras/nodes_webcam.py).

LoadImageOutput's ComfyUI type is a bare COMBO filled by the editor from /internal/files/output; Loom lists
the output images itself (annotated ``NAME [output]``), so its type here is a file combo.
"""

from __future__ import annotations

from typing import Any

FILES = "FILES"  # a file combo (tests/nodes/test_comfy_interface.py)

MAX_RESOLUTION = 16384
FPS = {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}

EXPECTED: dict[str, dict[str, Any]] = {
    "LoadImageOutput": {
        "required": [("image", FILES, {"image_upload": True, "image_folder": "output"})],
        "output": ["IMAGE", "MASK"],
    },
    "SaveAnimatedWEBP": {
        "required": [("images", "IMAGE", {}), ("filename_prefix", "STRING", {"default": "ComfyUI"}),
                     ("fps", "FLOAT", FPS), ("lossless", "BOOLEAN", {"default": True}),
                     ("quality", "INT", {"default": 80, "min": 0, "max": 100}),
                     ("method", ["default", "fastest", "slowest"], {})],
        "output": [],
        "output_node": True,
    },
    "SaveAnimatedPNG": {
        "required": [("images", "IMAGE", {}), ("filename_prefix", "STRING", {"default": "ComfyUI"}),
                     ("fps", "FLOAT", FPS), ("compress_level", "INT", {"default": 4, "min": 0, "max": 9})],
        "output": [],
        "output_node": True,
    },
    "SaveImageWebsocket": {"required": [("images", "IMAGE", {})], "output": [], "output_node": True},
    "WebcamCapture": {
        "required": [("image", "WEBCAM", {}),
                     ("width", "INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                     ("height", "INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                     ("capture_on_queue", "BOOLEAN", {"default": True})],
        "output": ["IMAGE"],
    },
}
