"""Image output nodes beyond SaveImage: animations (animated WebP, APNG), images sent over the websocket,
loading what was saved (LoadImageOutput) and webcam captures (ComfyUI's nodes_images, nodes_webcam,
websocket_image_save and nodes.LoadImageOutput).

Files are written through the FileStore under free counted names, never overwriting; names read from
a workflow resolve through :func:`nodes.image_io.resolve_image` (``"NAME [output]"`` picks the folder).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.sdk import (
    BOOLEAN,
    COMBO,
    FLOAT,
    IMAGE,
    INT,
    MASK,
    STRING,
    Folders,
    Input,
    Node,
    NodeOutput,
    Output,
    PathOutsideRoot,
    RunContext,
)
from nodes.image_io import IMAGE_EXTENSIONS, image_fingerprint, resolve_image, save_target
from nodes.image_ops import MAX_RESOLUTION

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

#: The editor's webcam widget type (its value names the uploaded capture).
WEBCAM = "WEBCAM"
#: SaveAnimatedWEBP's methods and the libwebp effort each stands for.
WEBP_METHODS: dict[str, int] = {"default": 4, "fastest": 0, "slowest": 6}


def output_image_choices(folders: Folders) -> list[str]:
    """The output folder's images as ``"NAME [output]"``, newest first (ComfyUI's list for LoadImageOutput)."""
    root = folders.root("output")

    def modified(name: str) -> float:
        try:
            return (root / name).stat().st_mtime
        except OSError:
            return 0.0

    names = folders.list_files("output", IMAGE_EXTENSIONS)
    return [f"{name} [output]" for name in sorted(names, key=lambda name: (-modified(name), name))]


def check_image_name(folders: Folders, value: Any) -> str | None:
    """Why ``value`` names no readable image (``"NAME [output]"`` style), or None when it does."""
    if not isinstance(value, str):
        return None  # linked: known only when it runs
    try:
        resolve_image(folders, value)
    except (OSError, PathOutsideRoot) as exc:
        return f"input 'image': {exc}"
    return None


class LoadImageOutput(Node):
    """Load an image from the output folder (values ``"NAME [output]"``); MASK is 1 where transparent."""

    display_name = "Load Image (from Outputs)"
    description = "Load an image from the output folder; the list starts with the newest, for quick iteration."
    category = "image"
    inputs = (
        Input("image", COMBO, choices=output_image_choices, image_upload=True, file_folder="input",
              extra={"image_folder": "output"}),
    )
    outputs = (Output(IMAGE), Output(MASK))
    validated_inputs = ("image",)

    @classmethod
    def validate_inputs(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return check_image_name(folders, inputs.get("image"))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return image_fingerprint(folders, inputs.get("image"))

    def run(self, ctx: RunContext, image: str) -> tuple[Tensor, Tensor]:
        from engine.sdk import files

        loaded = files.load_image_file(resolve_image(ctx.folders, image), image)
        return (loaded.image, loaded.mask)


def _save_animation(ctx: RunContext, images: Tensor, filename_prefix: str, suffix: str, data: bytes) -> NodeOutput:
    """Write one animation file as ``{prefix}_{counter:05}_.{suffix}`` in the output folder; ComfyUI's ui dict."""
    from engine.sdk import files

    rel_dir, name, counter = save_target(ctx, "output", filename_prefix, images.shape[2], images.shape[1])
    filename = files.save_counted(ctx.folders, "output", f"{name}_{counter:05}_.{suffix}", data, rel_dir)
    log.debug("saved %s/%s", rel_dir, filename)
    ui: dict[str, Any] = {"images": [{"filename": filename, "subfolder": rel_dir, "type": "output"}]}
    if len(images) > 1:
        ui["animated"] = [True]
    return NodeOutput(values=(), ui=ui)


class SaveAnimatedWEBP(Node):
    """Save an image batch as one animated WebP in the output folder, with the workflow in its EXIF."""

    python_module = "comfy_extras.nodes_images"
    category = "image/animation"
    output_node = True
    outputs = ()
    inputs = (
        Input("images", IMAGE),
        Input("filename_prefix", STRING, default="ComfyUI"),
        Input("fps", FLOAT, default=6.0, min=0.01, max=1000.0, step=0.01),
        Input("lossless", BOOLEAN, default=True),
        Input("quality", INT, default=80, min=0, max=100),
        Input("method", COMBO, choices=tuple(WEBP_METHODS)),
    )

    def run(self, ctx: RunContext, images: Tensor, filename_prefix: str, fps: float, lossless: bool,
            quality: int, method: str) -> NodeOutput:
        from engine.sdk import files

        data = files.animated_webp_bytes(images, fps, lossless=lossless, quality=quality,
                                         method=WEBP_METHODS[method], prompt=ctx.prompt or None,
                                         extra_pnginfo=ctx.extra_pnginfo or None)
        return _save_animation(ctx, images, filename_prefix, "webp", data)


class SaveAnimatedPNG(Node):
    """Save an image batch as one animated PNG in the output folder, with the workflow in ``comf`` chunks."""

    python_module = "comfy_extras.nodes_images"
    category = "image/animation"
    output_node = True
    outputs = ()
    inputs = (
        Input("images", IMAGE),
        Input("filename_prefix", STRING, default="ComfyUI"),
        Input("fps", FLOAT, default=6.0, min=0.01, max=1000.0, step=0.01),
        Input("compress_level", INT, default=4, min=0, max=9),
    )

    def run(self, ctx: RunContext, images: Tensor, filename_prefix: str, fps: float,
            compress_level: int) -> NodeOutput:
        from engine.sdk import files

        data = files.animated_png_bytes(images, fps, compress_level, ctx.prompt or None, ctx.extra_pnginfo or None)
        return _save_animation(ctx, images, filename_prefix, "png", data)


class SaveImageWebsocket(Node):
    """Send each image as a PNG in a binary websocket frame to the client that queued the prompt.

    Nothing is written to disk and no metadata is embedded. Frames follow ComfyUI: a big-endian uint32
    event type 1, a big-endian uint32 image type 2 (PNG), then the PNG bytes; clients that negotiated
    ``supports_preview_metadata`` get type-4 frames instead. Runs every time (its output is the sending).
    """

    python_module = "custom_nodes.websocket_image_save"
    category = "image"
    output_node = True
    always_run = True
    outputs = ()
    inputs = (Input("images", IMAGE),)

    def run(self, ctx: RunContext, images: Tensor) -> NodeOutput:
        from engine.sdk import files

        total = len(images)
        for step, image in enumerate(images):
            ctx.progress(step, total)
            ctx.send_image("PNG", files.png_bytes(image, None, None, compress_level=1))
        return NodeOutput()


def _webcam_size(image: Tensor, width: int, height: int) -> tuple[int, int]:
    """The capture's target size: each 0 keeps the image's own width or height."""
    return width or int(image.shape[2]), height or int(image.shape[1])


class WebcamCapture(Node):
    """Load the editor's webcam capture (uploaded as ``"webcam/NAME.png [temp]"``), resized to width x height
    where they are not 0. With capture_on_queue it runs on every queue (a new capture each time)."""

    display_name = "Webcam Capture"
    python_module = "comfy_extras.nodes_webcam"
    category = "image"
    inputs = (
        Input("image", WEBCAM, file_folder="input"),
        Input("width", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("height", INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("capture_on_queue", BOOLEAN, default=True),
    )
    outputs = (Output(IMAGE),)

    @classmethod
    def validate_inputs(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return check_image_name(folders, inputs.get("image"))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        if inputs.get("capture_on_queue", True):
            return uuid.uuid4().hex  # ComfyUI's IS_CHANGED NaN: never the same twice
        return image_fingerprint(folders, inputs.get("image"))

    def run(self, ctx: RunContext, image: str, width: int, height: int, capture_on_queue: bool) -> tuple[Tensor]:
        from engine.sdk import files, imaging

        pixels = files.load_image_file(resolve_image(ctx.folders, image), image).image
        size = _webcam_size(pixels, width, height)
        if size != (pixels.shape[2], pixels.shape[1]):
            pixels = imaging.scale_image(pixels, size[0], size[1], "bilinear")
        return (pixels,)


IMAGE_OUTPUT_NODES: tuple[type[Node], ...] = (LoadImageOutput, SaveAnimatedWEBP, SaveAnimatedPNG,
                                              SaveImageWebsocket, WebcamCapture)
