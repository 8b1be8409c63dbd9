"""Image nodes that transform pixels: scaling, inverting, batching, solid colours.

Also home of the torch-free constants the image, latent, mask and inpaint nodes declare with
(:data:`MAX_RESOLUTION`, :data:`UPSCALE_METHODS`, :data:`CROP_METHODS`). The pixel work lives in
:mod:`engine.sdk.imaging`. IMAGE tensors are ``[B, H, W, C]`` floats in 0..1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.sdk import COMBO, FLOAT, IMAGE, INT, Input, Node, Output, RunContext

if TYPE_CHECKING:
    from torch import Tensor

#: Largest width/height a node accepts (ComfyUI's MAX_RESOLUTION).
MAX_RESOLUTION = 16384

UPSCALE_METHODS: tuple[str, ...] = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS: tuple[str, ...] = ("disabled", "center")


def _method_input(methods: tuple[str, ...] = UPSCALE_METHODS) -> Input:
    return Input("upscale_method", COMBO, choices=methods, default=methods[0])


class ImageScale(Node):
    """Resize images to a width and height; 0 in one of them keeps the aspect ratio."""

    display_name = "Upscale Image"
    category = "image/upscaling"
    inputs = (
        Input("image", IMAGE),
        _method_input(),
        Input("width", INT, default=512, min=0, max=MAX_RESOLUTION, step=1),
        Input("height", INT, default=512, min=0, max=MAX_RESOLUTION, step=1),
        Input("crop", COMBO, choices=CROP_METHODS, default="disabled"),
    )
    outputs = (Output(IMAGE),)

    def run(
        self, ctx: RunContext, image: Tensor, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.scale_image_to(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    """Resize images by a factor."""

    display_name = "Upscale Image By"
    category = "image/upscaling"
    inputs = (
        Input("image", IMAGE),
        _method_input(),
        Input("scale_by", FLOAT, default=1.0, min=0.01, max=8.0, step=0.01),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, upscale_method: str, scale_by: float) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.scale_image_by(image, scale_by, upscale_method),)


class ImageInvert(Node):
    """Invert the colours of images (1 - value)."""

    display_name = "Invert Image"
    category = "image"
    inputs = (Input("image", IMAGE),)
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.invert_image(image),)


class ImageBatch(Node):
    """Join two image batches; image2 is resized (bilinear, centre crop) to image1's size."""

    display_name = "Batch Images"
    category = "image"
    inputs = (Input("image1", IMAGE), Input("image2", IMAGE))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image1: Tensor, image2: Tensor) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.batch_images(image1, image2),)


class EmptyImage(Node):
    """A batch of images filled with one RGB colour (0xRRGGBB)."""

    category = "image"
    inputs = (
        Input("width", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("height", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("batch_size", INT, default=1, min=1, max=4096),
        Input("color", INT, default=0, min=0, max=0xFFFFFF, step=1, extra={"display": "color"}),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, width: int, height: int, batch_size: int, color: int) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.solid_image(width, height, batch_size, color),)


IMAGE_OPS_NODES: tuple[type[Node], ...] = (ImageScale, ImageScaleBy, ImageInvert, ImageBatch, EmptyImage)
