"""Upscale models: UpscaleModelLoader and ImageUpscaleWithModel (ComfyUI's names and interface).

The loader reads a model from models/upscale_models (ComfyUI's folder; A1111's ``ESRGAN`` folder is also
read) through spandrel, which knows ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR and more, and returns
an UPSCALE_MODEL: the file's handle (path, size, mtime). The loaded model is cached by the engine.
ImageUpscaleWithModel runs it over the image in 512px tiles overlapping by 32px, halving the tile when
the device runs out of memory, and reports progress per tile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from engine.sdk import COMBO, IMAGE, FileRef, Folders, Input, ModelError, Node, Output, RunContext
from nodes.model_loaders import file_fingerprint

if TYPE_CHECKING:
    from torch import Tensor

#: The socket type of a loaded upscale model (ComfyUI's name); its value is a FileRef.
UPSCALE_MODEL: Final = "UPSCALE_MODEL"
_FOLDER = "upscale_models"


def _upscale_models(folders: Folders) -> list[str]:
    return folders.list_models(_FOLDER)


class UpscaleModelLoader(Node):
    """Load an upscale model (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, ...) from models/upscale_models."""

    display_name = "Load Upscale Model"
    category = "loaders"
    inputs = (Input("model_name", COMBO, choices=_upscale_models, file_folder=_FOLDER,
                    tooltip="The upscale model file (.safetensors or .pth) to load."),)
    outputs = (Output(UPSCALE_MODEL),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, _FOLDER, inputs["model_name"])

    def run(self, ctx: RunContext, model_name: str) -> tuple[FileRef]:
        from engine.sdk import upscale

        path = ctx.folders.model_path(_FOLDER, model_name)
        try:
            ref, description = upscale.describe_file(path)
        except upscale.UpscaleModelError as exc:
            raise ModelError(f"UpscaleModelLoader (node {ctx.node_id}), input model_name: {exc}. Pick an "
                             "ESRGAN-family, SwinIR, HAT, DAT or other spandrel-supported upscaler from "
                             "models/upscale_models") from exc
        ctx.log.info("%s: %s", model_name, description)
        return (ref,)


class ImageUpscaleWithModel(Node):
    """Upscale an image with an upscale model, in overlapping tiles."""

    display_name = "Upscale Image (using Model)"
    category = "image/upscaling"
    inputs = (Input("upscale_model", UPSCALE_MODEL, tooltip="The model from Load Upscale Model."),
              Input("image", IMAGE, tooltip="The image to upscale."))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, upscale_model: FileRef, image: Tensor) -> tuple[Tensor]:
        from engine.sdk import upscale

        if not isinstance(upscale_model, FileRef):
            raise ModelError(f"ImageUpscaleWithModel (node {ctx.node_id}), input upscale_model: got a "
                             f"{type(upscale_model).__name__}; link it to a Load Upscale Model node")

        def shrunk(tile: int) -> None:
            ctx.log.warning("node %s: out of memory; upscaling again with %dpx tiles", ctx.node_id, tile)

        upscaled = upscale.upscale_image(upscale_model, image, ctx.models.device, ctx.models.dtype,
                                         on_tile=ctx.progress, on_shrink=shrunk)
        return (upscaled,)


UPSCALE_MODEL_NODES: tuple[type[Node], ...] = (UpscaleModelLoader, ImageUpscaleWithModel)
