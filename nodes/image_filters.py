"""Image filter nodes (ComfyUI's comfy_extras/nodes_post_processing, nodes_images, nodes_morphology):
blend modes, blur, sharpen, palette quantization, seeded noise, grey morphology and YUV split/merge.
The pixel work lives in :mod:`engine.sdk.image_edit`.

IMAGE tensors are ``[B, H, W, C]`` floats in 0..1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.sdk import COMBO, FLOAT, IMAGE, INT, SEED_MAX, Input, Node, Output, RunContext

if TYPE_CHECKING:
    from torch import Tensor

_POST = "comfy_extras.nodes_post_processing"
_MORPHOLOGY = "comfy_extras.nodes_morphology"
_ADVANCED = {"advanced": True}


class ImageBlend(Node):
    """Blend image2 over image1 with a blend mode, mixed in by blend_factor."""

    python_module = _POST
    display_name = "Image Blend"
    category = "image/postprocessing"
    inputs = (
        Input("image1", IMAGE),
        Input("image2", IMAGE),
        Input("blend_factor", FLOAT, default=0.5, min=0.0, max=1.0, step=0.01),
        Input("blend_mode", COMBO, choices=("normal", "multiply", "screen", "overlay", "soft_light", "difference")),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image1: Tensor, image2: Tensor, blend_factor: float,
            blend_mode: str) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.blend_images(image1, image2, blend_factor, blend_mode),)


class ImageBlur(Node):
    """Gaussian blur with a (2 * blur_radius + 1) square kernel; sigma is relative to the radius."""

    python_module = _POST
    display_name = "Image Blur"
    category = "image/postprocessing"
    inputs = (
        Input("image", IMAGE),
        Input("blur_radius", INT, default=1, min=1, max=31, step=1),
        Input("sigma", FLOAT, default=1.0, min=0.1, max=10.0, step=0.1),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, blur_radius: int, sigma: float) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.blur_image(image, blur_radius, sigma),)


class ImageSharpen(Node):
    """Unsharp mask: add alpha * 10 times the difference from the gaussian blur."""

    python_module = _POST
    category = "image/postprocessing"
    inputs = (
        Input("image", IMAGE),
        Input("sharpen_radius", INT, default=1, min=1, max=31, step=1, extra=_ADVANCED),
        Input("sigma", FLOAT, default=1.0, min=0.1, max=10.0, step=0.01, extra=_ADVANCED),
        Input("alpha", FLOAT, default=1.0, min=0.0, max=5.0, step=0.01, extra=_ADVANCED),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, sharpen_radius: int, sigma: float, alpha: float) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.sharpen_image(image, sharpen_radius, sigma, alpha),)


class ImageQuantize(Node):
    """Reduce the image to a palette of at most ``colors`` colours, optionally dithered."""

    python_module = _POST
    category = "image/postprocessing"
    inputs = (
        Input("image", IMAGE),
        Input("colors", INT, default=256, min=1, max=256, step=1),
        Input("dither", COMBO, choices=("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, colors: int, dither: str) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.quantize_image(image, colors, dither),)


class ImageAddNoise(Node):
    """Add seeded gaussian noise (the same noise for the same seed and size)."""

    python_module = "comfy_extras.nodes_images"
    category = "image"
    inputs = (
        Input("image", IMAGE),
        Input("seed", INT, default=0, min=0, max=SEED_MAX, control_after_generate=True,
              tooltip="The random seed used for creating the noise."),
        Input("strength", FLOAT, default=0.5, min=0.0, max=1.0, step=0.01),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, seed: int, strength: float) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.add_noise(image, seed, strength),)


class Morphology(Node):
    """Grey morphology with a square kernel: erode, dilate, open, close, gradient, top/bottom hat."""

    python_module = _MORPHOLOGY
    display_name = "ImageMorphology"
    category = "image/postprocessing"
    inputs = (
        Input("image", IMAGE),
        Input("operation", COMBO, choices=("erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat")),
        Input("kernel_size", INT, default=3, min=3, max=999, step=1),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, operation: str, kernel_size: int) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.morphology(image, operation, kernel_size),)


class ImageRGBToYUV(Node):
    """Split an RGB image into Y (luma), U (Cb) and V (Cr) grey images."""

    python_module = _MORPHOLOGY
    category = "image/batch"
    inputs = (Input("image", IMAGE),)
    outputs = (Output(IMAGE, "Y"), Output(IMAGE, "U"), Output(IMAGE, "V"))

    def run(self, ctx: RunContext, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from engine.sdk import image_edit

        return image_edit.rgb_to_yuv(image)


class ImageYUVToRGB(Node):
    """Merge Y, U and V grey images (each averaged over its channels) back into RGB."""

    python_module = _MORPHOLOGY
    category = "image/batch"
    inputs = (Input("Y", IMAGE), Input("U", IMAGE), Input("V", IMAGE))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, Y: Tensor, U: Tensor, V: Tensor) -> tuple[Tensor]:  # noqa: N803
        from engine.sdk import image_edit

        return (image_edit.yuv_to_rgb(Y, U, V),)


IMAGE_FILTER_NODES: tuple[type[Node], ...] = (
    ImageBlend, ImageBlur, ImageSharpen, ImageQuantize, ImageAddNoise, Morphology, ImageRGBToYUV, ImageYUVToRGB,
)
