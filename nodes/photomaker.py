"""PhotoMakerLoader and PhotoMakerEncode: PhotoMaker v1 ID embeddings fused into an SDXL text conditioning
(ComfyUI's _for_testing/photomaker nodes). The trigger word "photomaker" follows the class word
("photograph of a man photomaker"); the class word's token embedding is fused with the image's ID embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.sdk import CLIP, COMBO, CONDITIONING, IMAGE, STRING, ClipHandle, Folders, Input, Node, Output, RunContext
from nodes.model_loaders import file_fingerprint

if TYPE_CHECKING:
    from torch import Tensor

    from engine.sdk.photomaker import PhotoMakerHandle

PHOTOMAKER = "PHOTOMAKER"
Conditioning = list[list[Any]]


def _photomakers(folders: Folders) -> list[str]:
    return folders.list_models("photomaker")


class PhotoMakerLoader(Node):
    """Load a PhotoMaker v1 ID encoder (photomaker-v1.bin or its safetensors) from models/photomaker."""

    category = "_for_testing/photomaker"
    inputs = (Input("photomaker_model_name", COMBO, choices=_photomakers, file_folder="photomaker",
                    tooltip="The PhotoMaker file."),)
    outputs = (Output(PHOTOMAKER),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "photomaker", inputs["photomaker_model_name"])

    def run(self, ctx: RunContext, photomaker_model_name: str) -> tuple[PhotoMakerHandle]:
        from engine.sdk import photomaker

        handle = photomaker.photomaker_handle(ctx.folders.model_path("photomaker", photomaker_model_name))
        ctx.log.info("%s: %s", photomaker_model_name, handle.label)
        return (handle,)


class PhotoMakerEncode(Node):
    """Encode the text with the class word before the trigger word "photomaker" fused with the image's identity."""

    category = "_for_testing/photomaker"
    inputs = (
        Input("photomaker", PHOTOMAKER),
        Input("image", IMAGE),
        Input("clip", CLIP),
        Input("text", STRING, default="photograph of photomaker", multiline=True, extra={"dynamicPrompts": True}),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, photomaker: PhotoMakerHandle, image: Tensor, clip: ClipHandle,
            text: str) -> tuple[Conditioning]:
        from engine.sdk import photomaker as sdk

        return (sdk.encode(ctx, photomaker, image, clip, text),)


PHOTOMAKER_NODES: tuple[type[Node], ...] = (PhotoMakerLoader, PhotoMakerEncode)
