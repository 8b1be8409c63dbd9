"""CLIP vision, style model and unCLIP nodes (SDXL Revision, T2I-Adapter style and Flux Redux workflows).

CLIPVisionLoader and StyleModelLoader return small handles (the file); the tower and the style model are
loaded into a small cache on first use. CLIPVisionEncode returns the CLIP_VISION_OUTPUT (image embeds and
hidden states; a SigLIP tower's, for Flux Redux, are its post-layernorm tokens); StyleModelApply appends style
tokens to the conditioning (Redux: 729 tokens on Flux's T5 context); unCLIPConditioning records the image
embeddings in the conditioning, and the sampler turns them into SDXL's pooled vector (noise augmented, seeded
from the sampler's seed).
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
    LoomError,
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
    """Load a vision tower (CLIP ViT-L/14, ViT-H/14, ViT-bigG/14; SigLIP so400m for Flux Redux) from
    models/clip_vision."""

    display_name = "Load CLIP Vision"
    category = "loaders"
    inputs = (Input("clip_name", COMBO, choices=_clip_visions, file_folder="clip_vision",
                    tooltip="The CLIP vision file (CLIP in transformers' or OpenCLIP's key layout, or SigLIP)."),)
    outputs = (Output(CLIP_VISION),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "clip_vision", inputs["clip_name"])

    def run(self, ctx: RunContext, clip_name: str) -> tuple[ClipVisionHandle]:
        from engine.sdk import vision

        path = ctx.folders.model_path("clip_vision", clip_name)
        try:
            handle = vision.clip_vision_handle(ctx, path)
        except LoomError as exc:
            raise ModelError(f"CLIPVisionLoader (node {ctx.node_id}), input clip_name: {exc}") from exc
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
    """Encode images with a vision tower (resize to its resolution, optional centre crop, its normalisation)."""

    display_name = "CLIP Vision Encode"
    category = "conditioning"
    inputs = (Input("clip_vision", CLIP_VISION), Input("image", IMAGE),
              Input("crop", COMBO, choices=["center", "none"],
                    tooltip="center: resize the short side to the tower's size (224, SigLIP 384) and crop the "
                            "middle; none: squash the whole image to that square."))
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

        path = ctx.folders.model_path("style_models", style_model_name)
        try:
            return (vision.style_model_handle(path),)
        except LoomError as exc:
            raise ModelError(f"StyleModelLoader (node {ctx.node_id}), input style_model_name: {exc}") from exc


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
                             f"{strength} needs an attention bias on the style tokens, which Loom does not "
                             "support yet; use strength_type 'multiply' (it scales the style tokens, e.g. Flux "
                             "Redux's image tokens) or strength 1.0")
        width, tower = vision.style_model_input(style_model)
        got = clip_vision_output.last_hidden_state.shape[-1]
        if width and got != width:
            raise ModelError(f"StyleModelApply (node {ctx.node_id}), input clip_vision_output: tokens of width "
                             f"{got}, but this style model takes width {width}; encode the image with {tower} "
                             "in CLIPVisionLoader")
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
        if clip_vision_output.image_embeds.ndim != 2:
            raise ModelError(f"unCLIPConditioning (node {ctx.node_id}), input clip_vision_output: it holds token "
                             "embeds (a SigLIP tower's), not one image embedding per image; use a CLIP vision "
                             "tower (e.g. clip_vision_g.safetensors) here, and SigLIP with StyleModelApply")
        return (vision.add_unclip(conditioning, clip_vision_output, strength, noise_augmentation),)


CLIP_VISION_NODES: tuple[type[Node], ...] = (CLIPVisionLoader, CLIPVisionEncode, StyleModelLoader, StyleModelApply,
                                             unCLIPConditioning, unCLIPCheckpointLoader)
