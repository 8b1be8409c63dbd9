"""Torch-backed SDK module: the image transform and filter nodes hand their pixels over here.

A node imports it inside ``run`` (``from engine.sdk import image_edit``), never at module level,
so registering nodes does not load torch. Everything is re-exported from pure-torch modules in
:mod:`engine.backend` (image_transform, image_filters, image_quantize). IMAGE is float
``[B, H, W, C]`` in 0..1.
"""

from __future__ import annotations

from engine.backend.image_filters import (
    add_noise,
    blend_images,
    blur_image,
    morphology,
    rgb_to_yuv,
    sharpen_image,
    yuv_to_rgb,
)
from engine.backend.image_quantize import quantize_image
from engine.backend.image_transform import (
    crop_image,
    flip_image,
    image_from_batch,
    rebatch_images,
    repeat_image_batch,
    resize_and_pad,
    rotate_image,
    scale_to_max_dimension,
    scale_to_total_pixels,
    stitch_images,
)

__all__ = [
    "add_noise", "blend_images", "blur_image", "crop_image", "flip_image", "image_from_batch", "morphology",
    "quantize_image", "rebatch_images", "repeat_image_batch", "resize_and_pad", "rgb_to_yuv", "rotate_image",
    "scale_to_max_dimension", "scale_to_total_pixels", "sharpen_image", "stitch_images", "yuv_to_rgb",
]
