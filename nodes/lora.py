"""LoraLoader and LoraLoaderModelOnly: add a LoRA file, with a strength, to MODEL and CLIP handles.

They return new handles with one more ``WeightPatch`` and touch no weights: the ModelManager applies
a handle's patches when a node asks for the module (engine/models/patching.py), and puts the
original weights back for a handle without them. A strength of 0 leaves that handle unchanged. The
LoRA file's size and mtime are part of the handle and of the node's fingerprint, so an edited file
is noticed. Formats: kohya / LyCORIS (LoRA, LoCon, LoHa, LoKr), diffusers / PEFT; see
engine/models/lora_formats.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.sdk import (
    CLIP,
    COMBO,
    FLOAT,
    MODEL,
    ClipHandle,
    FileRef,
    Folders,
    Input,
    ModelHandle,
    Node,
    Output,
    RunContext,
    WeightPatch,
)
from nodes.model_loaders import file_fingerprint

STRENGTH_LIMIT = 100.0


def _loras(folders: Folders) -> list[str]:
    return folders.list_models("loras")


def _strength(name: str, what: str) -> Input:
    return Input(name, FLOAT, default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01,
                 tooltip=f"How strongly to modify the {what}; 0 leaves it unchanged, negative values invert the LoRA.")


_LORA_NAME = Input("lora_name", COMBO, choices=_loras, file_folder="loras", tooltip="The LoRA file (models/loras).")


def lora_ref(ctx: RunContext, lora_name: str) -> FileRef:
    """The FileRef of a LoRA in the loras folder, after checking that the file holds LoRA keys."""
    from engine.sdk import files

    path = ctx.folders.model_path("loras", lora_name)
    files.check_lora_file(path, lora_name)
    return FileRef.of(path)


def _fingerprint(folders: Folders, inputs: Mapping[str, Any]) -> str | None:
    name = inputs.get("lora_name")
    return file_fingerprint(folders, "loras", name) if isinstance(name, str) else None


class LoraLoader(Node):
    """Apply a LoRA to the diffusion model and the text encoder, each with its own strength."""

    display_name = "Load LoRA"
    category = "loaders"
    aliases = ("LoRALoader",)
    inputs = (
        Input("model", MODEL, tooltip="The diffusion model the LoRA will be applied to."),
        Input("clip", CLIP, tooltip="The text encoder the LoRA will be applied to."),
        _LORA_NAME,
        _strength("strength_model", "diffusion model"),
        _strength("strength_clip", "text encoder"),
    )
    outputs = (Output(MODEL, tooltip="The modified diffusion model."),
               Output(CLIP, tooltip="The modified text encoder."))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return _fingerprint(folders, inputs)

    def run(self, ctx: RunContext, model: ModelHandle, clip: ClipHandle, lora_name: str, strength_model: float,
            strength_clip: float) -> tuple[ModelHandle, ClipHandle]:
        if strength_model == 0 and strength_clip == 0:
            return model, clip
        ref = lora_ref(ctx, lora_name)
        if strength_model != 0:
            model = model.with_patch(WeightPatch(ref, strength_model))
        if strength_clip != 0:
            clip = clip.with_patch(WeightPatch(ref, strength_clip))
        return model, clip


class LoraLoaderModelOnly(Node):
    """Apply a LoRA to the diffusion model only."""

    display_name = "LoraLoaderModelOnly"
    category = "loaders"
    inputs = (Input("model", MODEL), _LORA_NAME, _strength("strength_model", "diffusion model"))
    outputs = (Output(MODEL),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return _fingerprint(folders, inputs)

    def run(self, ctx: RunContext, model: ModelHandle, lora_name: str, strength_model: float) -> tuple[ModelHandle]:
        if strength_model == 0:
            return (model,)
        return (model.with_patch(WeightPatch(lora_ref(ctx, lora_name), strength_model)),)


LORA_NODES = (LoraLoader, LoraLoaderModelOnly)
