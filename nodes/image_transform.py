"""Image transform nodes (ComfyUI's comfy_extras/nodes_images, nodes_post_processing, nodes_rebatch):
scale to a pixel budget or a longest side, crop, stitch, rotate, flip, resize-and-pad, image size,
and batch repeat/slice/rebatch. The pixel work lives in :mod:`engine.sdk.image_edit`.

IMAGE tensors are ``[B, H, W, C]`` floats in 0..1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.sdk import BOOLEAN, COMBO, FLOAT, IMAGE, INT, Input, Node, Output, RunContext
from nodes.image_ops import MAX_RESOLUTION, UPSCALE_METHODS

if TYPE_CHECKING:
    from torch import Tensor

_IMAGES = "comfy_extras.nodes_images"
#: ImageScaleToMaxDimension's list, "bilinear" twice as in ComfyUI.
_MAX_DIMENSION_METHODS = ("area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic")
_PAD_METHODS = ("area", "bicubic", "nearest-exact", "bilinear", "lanczos")


class ImageScaleToTotalPixels(Node):
    """Resize to a number of megapixels (1 MP = 1024 x 1024), keeping the aspect ratio."""

    python_module = "comfy_extras.nodes_post_processing"
    category = "image/upscaling"
    inputs = (
        Input("image", IMAGE),
        Input("upscale_method", COMBO, choices=UPSCALE_METHODS),
        Input("megapixels", FLOAT, default=1.0, min=0.01, max=16.0, step=0.01),
        Input("resolution_steps", INT, default=1, min=1, max=256, extra={"advanced": True},
              tooltip="Round width and height to multiples of this."),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, upscale_method: str, megapixels: float,
            resolution_steps: int) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.scale_to_total_pixels(image, upscale_method, megapixels, resolution_steps),)


class ImageScaleToMaxDimension(Node):
    """Resize so the longer side has ``largest_size`` pixels, keeping the aspect ratio."""

    python_module = _IMAGES
    category = "image/upscaling"
    inputs = (
        Input("image", IMAGE),
        Input("upscale_method", COMBO, choices=_MAX_DIMENSION_METHODS),
        Input("largest_size", INT, default=512, min=0, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, upscale_method: str, largest_size: int) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.scale_to_max_dimension(image, upscale_method, largest_size),)


class ImageCrop(Node):
    """Cut a width x height region out at (x, y); the region stops at the image's edges."""

    python_module = _IMAGES
    display_name = "Crop Image"
    category = "image/transform"
    inputs = (
        Input("image", IMAGE),
        Input("width", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("height", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, width: int, height: int, x: int, y: int) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.crop_image(image, width, height, x, y),)


class ImageStitch(Node):
    """Put image2 beside, below, left of or above image1, with optional spacing between them."""

    python_module = _IMAGES
    description = ("Stitches image2 to image1 in the specified direction.\n"
                   "If image2 is not provided, returns image1 unchanged.\n"
                   "Optional spacing can be added between images.")
    display_name = "Image Stitch"
    category = "image/transform"
    inputs = (
        Input("image1", IMAGE),
        Input("direction", COMBO, choices=("right", "down", "left", "up"), default="right"),
        Input("match_image_size", BOOLEAN, default=True),
        Input("spacing_width", INT, default=0, min=0, max=1024, step=2),
        Input("spacing_color", COMBO, choices=("white", "black", "red", "green", "blue"), default="white"),
        Input("image2", IMAGE, optional=True),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image1: Tensor, direction: str, match_image_size: bool, spacing_width: int,
            spacing_color: str, image2: Tensor | None = None) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.stitch_images(image1, image2, direction, match_image_size, spacing_width,
                                         spacing_color),)


class ImageRotate(Node):
    """Rotate clockwise by 0, 90, 180 or 270 degrees."""

    python_module = _IMAGES
    display_name = "Rotate"
    category = "image/transform"
    inputs = (
        Input("image", IMAGE),
        Input("rotation", COMBO, choices=("none", "90 degrees", "180 degrees", "270 degrees")),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, rotation: str) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.rotate_image(image, rotation),)


class ImageFlip(Node):
    """Mirror the image top-bottom (x-axis) or left-right (y-axis)."""

    python_module = _IMAGES
    category = "image/transform"
    inputs = (
        Input("image", IMAGE),
        Input("flip_method", COMBO, choices=("x-axis: vertically", "y-axis: horizontally")),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, flip_method: str) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.flip_image(image, flip_method),)


class ResizeAndPadImage(Node):
    """Fit the image inside the target size, keeping its aspect ratio, and pad the rest."""

    python_module = _IMAGES
    category = "image/transform"
    inputs = (
        Input("image", IMAGE),
        Input("target_width", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("target_height", INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("padding_color", COMBO, choices=("white", "black")),
        Input("interpolation", COMBO, choices=_PAD_METHODS),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, target_width: int, target_height: int, padding_color: str,
            interpolation: str) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.resize_and_pad(image, target_width, target_height, padding_color, interpolation),)


class GetImageSize(Node):
    """Returns width and height of the image, and passes it through unchanged."""

    python_module = _IMAGES
    display_name = "Get Image Size"
    category = "image"
    inputs = (Input("image", IMAGE),)
    outputs = (Output(INT, "width"), Output(INT, "height"), Output(INT, "batch_size"))

    def run(self, ctx: RunContext, image: Tensor) -> tuple[int, int, int]:
        batch, height, width = (int(size) for size in image.shape[:3])
        ctx.log.debug("GetImageSize: width %d, height %d, batch size %d", width, height, batch)
        return width, height, batch


class RepeatImageBatch(Node):
    """Repeat the whole batch ``amount`` times."""

    python_module = _IMAGES
    category = "image/batch"
    inputs = (Input("image", IMAGE), Input("amount", INT, default=1, min=1, max=4096))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, amount: int) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.repeat_image_batch(image, amount),)


class ImageFromBatch(Node):
    """Take ``length`` images starting at ``batch_index`` (both clamped to the batch)."""

    python_module = _IMAGES
    category = "image/batch"
    inputs = (
        Input("image", IMAGE),
        Input("batch_index", INT, default=0, min=0, max=4095),
        Input("length", INT, default=1, min=1, max=4096),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, batch_index: int, length: int) -> tuple[Tensor]:
        from engine.sdk import image_edit

        return (image_edit.image_from_batch(image, batch_index, length),)


class RebatchImages(Node):
    """Regroup a list of image batches into batches of ``batch_size`` (a list output)."""

    python_module = "comfy_extras.nodes_rebatch"
    display_name = "Rebatch Images"
    category = "image/batch"
    input_is_list = True
    inputs = (Input("images", IMAGE), Input("batch_size", INT, default=1, min=1, max=4096))
    outputs = (Output(IMAGE, is_list=True),)

    def run(self, ctx: RunContext, images: list[Tensor], batch_size: list[int]) -> tuple[list[Tensor]]:
        from engine.sdk import image_edit

        return (image_edit.rebatch_images(list(images), batch_size[0]),)


IMAGE_TRANSFORM_NODES: tuple[type[Node], ...] = (
    ImageScaleToTotalPixels, ImageScaleToMaxDimension, ImageCrop, ImageStitch, ImageRotate, ImageFlip,
    ResizeAndPadImage, GetImageSize, RepeatImageBatch, ImageFromBatch, RebatchImages,
)
