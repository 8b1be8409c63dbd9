"""ComfyUI's interface for the image transform nodes (comfy_extras/nodes_images.py,
nodes_post_processing.py's ImageScaleToTotalPixels, nodes_rebatch.py's RebatchImages)."""

from __future__ import annotations

from typing import Any

MAX_RESOLUTION = 16384
UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
IMAGE_IN: tuple[str, str, dict[str, Any]] = ("image", "IMAGE", {})


def _size(name: str, default: int, low: int) -> tuple[str, str, dict[str, Any]]:
    return (name, "INT", {"default": default, "min": low, "max": MAX_RESOLUTION, "step": 1})


EXPECTED: dict[str, dict[str, Any]] = {
    "ImageScaleToTotalPixels": {
        "required": [IMAGE_IN, ("upscale_method", UPSCALE, {}),
                     ("megapixels", "FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
                     ("resolution_steps", "INT", {"default": 1, "min": 1, "max": 256})],
        "output": ["IMAGE"],
    },
    "ImageScaleToMaxDimension": {
        "required": [IMAGE_IN,
                     ("upscale_method", ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"], {}),
                     _size("largest_size", 512, 0)],
        "output": ["IMAGE"],
    },
    "ImageCrop": {
        "required": [IMAGE_IN, _size("width", 512, 1), _size("height", 512, 1), _size("x", 0, 0), _size("y", 0, 0)],
        "output": ["IMAGE"],
    },
    "ImageStitch": {
        "required": [("image1", "IMAGE", {}),
                     ("direction", ["right", "down", "left", "up"], {"default": "right"}),
                     ("match_image_size", "BOOLEAN", {"default": True}),
                     ("spacing_width", "INT", {"default": 0, "min": 0, "max": 1024, "step": 2}),
                     ("spacing_color", ["white", "black", "red", "green", "blue"], {"default": "white"})],
        "optional": [("image2", "IMAGE", {})],
        "output": ["IMAGE"],
    },
    "ImageRotate": {
        "required": [IMAGE_IN, ("rotation", ["none", "90 degrees", "180 degrees", "270 degrees"], {})],
        "output": ["IMAGE"],
    },
    "ImageFlip": {
        "required": [IMAGE_IN, ("flip_method", ["x-axis: vertically", "y-axis: horizontally"], {})],
        "output": ["IMAGE"],
    },
    "ResizeAndPadImage": {
        "required": [IMAGE_IN, _size("target_width", 512, 1), _size("target_height", 512, 1),
                     ("padding_color", ["white", "black"], {}),
                     ("interpolation", ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"], {})],
        "output": ["IMAGE"],
    },
    "GetImageSize": {
        "required": [IMAGE_IN],
        "output": ["INT", "INT", "INT"],
        "output_name": ["width", "height", "batch_size"],
    },
    "RepeatImageBatch": {
        "required": [IMAGE_IN, ("amount", "INT", {"default": 1, "min": 1, "max": 4096})],
        "output": ["IMAGE"],
    },
    "ImageFromBatch": {
        "required": [IMAGE_IN, ("batch_index", "INT", {"default": 0, "min": 0, "max": 4095}),
                     ("length", "INT", {"default": 1, "min": 1, "max": 4096})],
        "output": ["IMAGE"],
    },
    "RebatchImages": {
        "required": [("images", "IMAGE", {}), ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096})],
        "output": ["IMAGE"],
        "output_is_list": [True],
    },
}
