"""Nodes that pick model files: CheckpointLoaderSimple, VAELoader, ModelSamplingDiscrete.

They return light handles (engine/models/handles.py), never weights: the ModelManager loads a part
when a node needs it, so changing a prompt never reloads a checkpoint and the output cache holds
no second copy of a model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.sdk import (
    CLIP,
    COMBO,
    MODEL,
    VAE,
    ClipHandle,
    FileRef,
    Folders,
    Input,
    ModelHandle,
    Node,
    Output,
    RunContext,
    VaeHandle,
)


def _checkpoints(folders: Folders) -> list[str]:
    return folders.list_models("checkpoints")


def _vaes(folders: Folders) -> list[str]:
    return folders.list_models("vae")


def file_fingerprint(folders: Folders, folder: str, name: str) -> str:
    """Size and mtime of a model file: enough to notice a replaced file without hashing gigabytes."""
    ref = FileRef.of(folders.model_path(folder, name))
    return f"{ref.path}:{ref.size}:{ref.mtime_ns}"


class CheckpointLoaderSimple(Node):
    """Load a Stable Diffusion checkpoint (SD1.x, SD2.x, SDXL): its UNet, text encoder and VAE."""

    display_name = "Load Checkpoint"
    category = "loaders"
    aliases = ("LoadCheckpoint",)
    inputs = (Input("ckpt_name", COMBO, choices=_checkpoints, file_folder="checkpoints",
                    tooltip="The checkpoint file to load."),)
    outputs = (Output(MODEL, tooltip="The diffusion model."), Output(CLIP, tooltip="The text encoder."),
               Output(VAE, tooltip="The autoencoder between pixels and latents."))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "checkpoints", inputs["ckpt_name"])

    def run(self, ctx: RunContext, ckpt_name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        from engine.sdk import files

        path = ctx.folders.model_path("checkpoints", ckpt_name)
        ref = FileRef.of(path)
        family = files.checkpoint_family(path)
        ctx.log.info("%s: %s", ckpt_name, family.label)
        return ModelHandle(ref, family), ClipHandle(ref, family), VaeHandle(ref, files.VAE_PREFIX)


class VAELoader(Node):
    """Load a separate VAE file (or the VAE of a checkpoint file placed in models/vae)."""

    display_name = "Load VAE"
    category = "loaders"
    inputs = (Input("vae_name", COMBO, choices=_vaes, file_folder="vae"),)
    outputs = (Output(VAE),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "vae", inputs["vae_name"])

    def run(self, ctx: RunContext, vae_name: str) -> tuple[VaeHandle]:
        from engine.sdk import files

        path = ctx.folders.model_path("vae", vae_name)
        return (VaeHandle(FileRef.of(path), files.vae_prefix(path, vae_name)),)


class ModelSamplingDiscrete(Node):
    """Override how the model's output is read: eps (noise) or v-prediction (e.g. for SD2 768-v)."""

    category = "advanced/model"
    inputs = (Input("model", MODEL), Input("sampling", COMBO, choices=("eps", "v_prediction")))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, sampling: str) -> tuple[ModelHandle]:
        prediction = "v" if sampling == "v_prediction" else "eps"
        return (model.with_family(dataclasses.replace(model.family, prediction=prediction)),)


MODEL_LOADER_NODES = (CheckpointLoaderSimple, VAELoader, ModelSamplingDiscrete)
