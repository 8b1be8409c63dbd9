"""CheckpointSave, ModelSave, CLIPSave and VAESave: write what the graph made (merges, LoRAs baked in) as
model files (ComfyUI's names, inputs and defaults).

``filename_prefix`` works as ComfyUI's, with one difference: a prefix starting with a model folder
(``checkpoints/``, ``diffusion_models/``, ``clip/``, ``vae/``, ``loras/``) saves into that models folder, so
the loaders list the file at once; any other prefix saves under the output folder. Files are
``{prefix}_{counter:05}_.safetensors``, written atomically and never over another file. Two inputs are
Loom's own: ``dtype`` (fp16 by default, bf16 or fp32) and ``include_workflow`` (put the prompt and workflow
in the file's metadata; off by default, since a model file travels further than an image).
"""

from __future__ import annotations

from typing import Any

from engine.sdk import (
    BOOLEAN,
    CLIP,
    COMBO,
    MODEL,
    STRING,
    VAE,
    ClipHandle,
    Input,
    ModelHandle,
    Node,
    NodeOutput,
    RunContext,
    VaeHandle,
)

CATEGORY = "advanced/model_merging"
DTYPES = ("fp16", "bf16", "fp32")
OPTIONS = (
    Input("dtype", COMBO, choices=DTYPES, default="fp16", optional=True,
          tooltip="How floating-point weights are stored (Loom's option)."),
    Input("include_workflow", BOOLEAN, default=False, optional=True,
          tooltip="Write the prompt and workflow into the file's metadata (Loom's option)."),
)


def _prefix(default: str) -> Input:
    return Input("filename_prefix", STRING, default=default)


def _saved(ctx: RunContext, paths: list[Any]) -> NodeOutput:
    for path in paths:
        ctx.log.info("model saved to %s", path)
    return NodeOutput(ui={"models": [{"filename": path.name, "folder": str(path.parent)} for path in paths]})


class CheckpointSave(Node):
    """Save the model, text encoder and VAE as one checkpoint file (as CheckpointLoaderSimple reads it)."""

    display_name = "Save Checkpoint"
    category = CATEGORY
    output_node = True
    outputs = ()
    inputs = (Input("model", MODEL), Input("clip", CLIP), Input("vae", VAE), _prefix("checkpoints/ComfyUI"),
              *OPTIONS)

    def run(self, ctx: RunContext, model: ModelHandle, clip: ClipHandle, vae: VaeHandle, filename_prefix: str,
            dtype: str = "fp16", include_workflow: bool = False) -> NodeOutput:
        from engine.sdk import saving

        directory, name = ctx.folders.model_save_dir(filename_prefix)
        return _saved(ctx, [saving.save_checkpoint(ctx, directory, name, model, clip, vae, dtype, include_workflow)])


class ModelSave(Node):
    """Save the diffusion model alone (as UNETLoader reads it)."""

    category = CATEGORY
    output_node = True
    outputs = ()
    inputs = (Input("model", MODEL), _prefix("diffusion_models/ComfyUI"), *OPTIONS)

    def run(self, ctx: RunContext, model: ModelHandle, filename_prefix: str, dtype: str = "fp16",
            include_workflow: bool = False) -> NodeOutput:
        from engine.sdk import saving

        directory, name = ctx.folders.model_save_dir(filename_prefix)
        return _saved(ctx, [saving.save_unet(ctx, directory, name, model, dtype, include_workflow)])


class CLIPSave(Node):
    """Save the text encoder(s), one file per tower (as CLIPLoader / DualCLIPLoader read them)."""

    category = CATEGORY
    output_node = True
    outputs = ()
    inputs = (Input("clip", CLIP), _prefix("clip/ComfyUI"), *OPTIONS)

    def run(self, ctx: RunContext, clip: ClipHandle, filename_prefix: str, dtype: str = "fp16",
            include_workflow: bool = False) -> NodeOutput:
        from engine.sdk import saving

        directory, name = ctx.folders.model_save_dir(filename_prefix)
        return _saved(ctx, saving.save_clip(ctx, directory, name, clip, dtype, include_workflow))


class VAESave(Node):
    """Save the VAE alone (as VAELoader reads it)."""

    category = CATEGORY
    output_node = True
    outputs = ()
    inputs = (Input("vae", VAE), _prefix("vae/ComfyUI_vae"), *OPTIONS)

    def run(self, ctx: RunContext, vae: VaeHandle, filename_prefix: str, dtype: str = "fp16",
            include_workflow: bool = False) -> NodeOutput:
        from engine.sdk import saving

        directory, name = ctx.folders.model_save_dir(filename_prefix)
        return _saved(ctx, [saving.save_vae(ctx, directory, name, vae, dtype, include_workflow)])


CHECKPOINT_SAVE_NODES: tuple[type[Node], ...] = (CheckpointSave, ModelSave, CLIPSave, VAESave)
