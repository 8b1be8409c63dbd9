"""CLIP vision, style model and unCLIP nodes (SDXL Revision and T2I-Adapter style workflows).

CLIPVisionLoader and StyleModelLoader return small handles (the file); the tower and the style model are
loaded into a small cache on first use. CLIPVisionEncode returns the CLIP_VISION_OUTPUT (image embeds and
hidden states); StyleModelApply appends style tokens to the conditioning; unCLIPConditioning records the
image embeddings in the conditioning, and the sampler turns them into SDXL's pooled vector (noise
augmented, seeded from the sampler's seed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.sdk import (
    CLIP,
    COMBO,
    CONDITIONING,
    FLOAT,
    IMAGE,
    MODEL,
    VAE,
    ClipHandle,
    Folders,
    Input,
    ModelError,
    ModelHandle,
    Node,
    Output,
    RunContext,
    VaeHandle,
)
from nodes.model_loaders import CheckpointLoaderSimple, file_fingerprint

if TYPE_CHECKING:
    from torch import Tensor

    from engine.sdk.vision import ClipVisionHandle, ClipVisionOutput, StyleModelHandle

CLIP_VISION = "CLIP_VISION"
CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
STYLE_MODEL = "STYLE_MODEL"
#: Where SD2.1 unCLIP checkpoints keep their OpenCLIP vision tower.
UNCLIP_VISION_PREFIX = "embedder.model.visual."

Conditioning = list[list[Any]]


def _clip_visions(folders: Folders) -> list[str]:
    return folders.list_models("clip_vision")


def _checkpoints(folders: Folders) -> list[str]:
    return folders.list_models("checkpoints")


def _style_models(folders: Folders) -> list[str]:
    return folders.list_models("style_models")


class CLIPVisionLoader(Node):
    """Load a CLIP vision tower (OpenAI ViT-L/14, OpenCLIP ViT-H/14 or ViT-bigG) from models/clip_vision."""

    display_name = "Load CLIP Vision"
    category = "loaders"
    inputs = (Input("clip_name", COMBO, choices=_clip_visions, file_folder="clip_vision",
                    tooltip="The CLIP vision file (transformers or OpenCLIP key layout)."),)
    outputs = (Output(CLIP_VISION),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "clip_vision", inputs["clip_name"])

    def run(self, ctx: RunContext, clip_name: str) -> tuple[ClipVisionHandle]:
        from engine.sdk import vision

        handle = vision.clip_vision_handle(ctx, ctx.folders.model_path("clip_vision", clip_name))
        ctx.log.info("%s: %s", clip_name, handle.label)
        return (handle,)


class unCLIPCheckpointLoader(Node):  # noqa: N801 - ComfyUI's node name
    """Load an SD2.1 unCLIP checkpoint: its UNet, text encoder, VAE and its own CLIP vision tower."""

    display_name = "unCLIPCheckpointLoader"
    category = "loaders"
    inputs = (Input("ckpt_name", COMBO, choices=_checkpoints, file_folder="checkpoints",
                    tooltip="The unCLIP checkpoint file to load."),)
    outputs = (Output(MODEL), Output(CLIP), Output(VAE), Output(CLIP_VISION))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "checkpoints", inputs["ckpt_name"])

    def run(self, ctx: RunContext, ckpt_name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle, ClipVisionHandle]:
        from engine.sdk import vision

        model, clip, vae = CheckpointLoaderSimple().run(ctx, ckpt_name)
        path = ctx.folders.model_path("checkpoints", ckpt_name)
        return model, clip, vae, vision.clip_vision_handle(ctx, path, UNCLIP_VISION_PREFIX)


class CLIPVisionEncode(Node):
    """Encode images with a CLIP vision tower (CLIP's resize, optional centre crop and normalisation)."""

    display_name = "CLIP Vision Encode"
    category = "conditioning"
    inputs = (Input("clip_vision", CLIP_VISION), Input("image", IMAGE),
              Input("crop", COMBO, choices=["center", "none"],
                    tooltip="center: resize the short side to 224 and crop the middle; none: squash to 224x224."))
    outputs = (Output(CLIP_VISION_OUTPUT),)

    def run(self, ctx: RunContext, clip_vision: ClipVisionHandle, image: Tensor,
            crop: str = "center") -> tuple[ClipVisionOutput]:
        from engine.sdk import vision

        return (vision.encode_image(ctx, clip_vision, image, crop == "center"),)


class StyleModelLoader(Node):
    """Load a style model (T2I-Adapter style, or Flux Redux) from models/style_models."""

    display_name = "Load Style Model"
    category = "loaders"
    inputs = (Input("style_model_name", COMBO, choices=_style_models, file_folder="style_models",
                    tooltip="The style model file."),)
    outputs = (Output(STYLE_MODEL),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "style_models", inputs["style_model_name"])

    def run(self, ctx: RunContext, style_model_name: str) -> tuple[StyleModelHandle]:
        from engine.sdk import vision

        return (vision.style_model_handle(ctx.folders.model_path("style_models", style_model_name)),)


class StyleModelApply(Node):
    """Append a style model's tokens (from a CLIP vision output) to every conditioning entry."""

    display_name = "Apply Style Model"
    category = "conditioning/style_model"
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("style_model", STYLE_MODEL),
        Input("clip_vision_output", CLIP_VISION_OUTPUT),
        Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.001,
              tooltip="Scales the style tokens (multiply)."),
        Input("strength_type", COMBO, choices=["multiply", "attn_bias"],
              tooltip="multiply: scale the style tokens; attn_bias is not supported except at strength 1."),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning, style_model: StyleModelHandle,
            clip_vision_output: ClipVisionOutput, strength: float = 1.0,
            strength_type: str = "multiply") -> tuple[Conditioning]:
        from engine.sdk import vision

        if strength_type == "attn_bias" and strength != 1.0:
            raise ModelError(f"StyleModelApply (node {ctx.node_id}): strength_type 'attn_bias' with strength "
                             f"{strength} needs attention masks, which Loom does not support yet; use "
                             "strength_type 'multiply' (or strength 1.0)")
        return (vision.apply_style_model(conditioning, style_model, clip_vision_output, strength, strength_type),)


class unCLIPConditioning(Node):  # noqa: N801 - ComfyUI's node name
    """Add CLIP vision image embeddings to the conditioning (SDXL Revision, unCLIP models)."""

    display_name = "unCLIPConditioning"
    category = "conditioning"
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("clip_vision_output", CLIP_VISION_OUTPUT),
        Input("strength", FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01,
              tooltip="Weight of the image embeddings (0 leaves the conditioning unchanged)."),
        Input("noise_augmentation", FLOAT, default=0.0, min=0.0, max=1.0, step=0.01,
              tooltip="How much noise is added to the image embeddings (seeded from the sampler's seed)."),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning, clip_vision_output: ClipVisionOutput,
            strength: float = 1.0, noise_augmentation: float = 0.0) -> tuple[Conditioning]:
        from engine.sdk import vision

        if strength == 0:
            return (conditioning,)
        return (vision.add_unclip(conditioning, clip_vision_output, strength, noise_augmentation),)


CLIP_VISION_NODES: tuple[type[Node], ...] = (CLIPVisionLoader, CLIPVisionEncode, StyleModelLoader, StyleModelApply,
                                             unCLIPConditioning, unCLIPCheckpointLoader)
