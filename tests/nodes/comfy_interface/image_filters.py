"""ComfyUI's interface for the image filter nodes (comfy_extras/nodes_post_processing.py,
nodes_images.py's ImageAddNoise, nodes_morphology.py)."""

from __future__ import annotations

from typing import Any

IMAGE_IN: tuple[str, str, dict[str, Any]] = ("image", "IMAGE", {})

EXPECTED: dict[str, dict[str, Any]] = {
    "ImageBlend": {
        "required": [("image1", "IMAGE", {}), ("image2", "IMAGE", {}),
                     ("blend_factor", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
                     ("blend_mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"], {})],
        "output": ["IMAGE"],
    },
    "ImageBlur": {
        "required": [IMAGE_IN, ("blur_radius", "INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                     ("sigma", "FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1})],
        "output": ["IMAGE"],
    },
    "ImageSharpen": {
        "required": [IMAGE_IN, ("sharpen_radius", "INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                     ("sigma", "FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
                     ("alpha", "FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01})],
        "output": ["IMAGE"],
    },
    "ImageQuantize": {
        "required": [IMAGE_IN, ("colors", "INT", {"default": 256, "min": 1, "max": 256, "step": 1}),
                     ("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"], {})],
        "output": ["IMAGE"],
    },
    "ImageAddNoise": {
        "required": [IMAGE_IN,
                     ("seed", "INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                      "control_after_generate": True,
                                      "tooltip": "The random seed used for creating the noise."}),
                     ("strength", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})],
        "output": ["IMAGE"],
    },
    "Morphology": {
        "required": [IMAGE_IN,
                     ("operation", ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"], {}),
                     ("kernel_size", "INT", {"default": 3, "min": 3, "max": 999, "step": 1})],
        "output": ["IMAGE"],
    },
    "ImageRGBToYUV": {
        "required": [IMAGE_IN],
        "output": ["IMAGE", "IMAGE", "IMAGE"],
        "output_name": ["Y", "U", "V"],
    },
    "ImageYUVToRGB": {
        "required": [("Y", "IMAGE", {}), ("U", "IMAGE", {}), ("V", "IMAGE", {})],
        "output": ["IMAGE"],
    },
}
