"""Nodes that pick model files (CheckpointLoaderSimple, VAELoader) and say how a MODEL samples
(ModelSamplingDiscrete, ModelSamplingContinuousEDM, ModelSamplingContinuousV, ModelComputeDtype,
Epsilon Scaling).

They return light handles (engine/models/handles.py), never weights: the ModelManager loads a part
when a node needs it, so changing a prompt never reloads a checkpoint and the output cache holds
no second copy of a model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.sdk import (
    BOOLEAN,
    CLIP,
    COMBO,
    FLOAT,
    MODEL,
    TINY_VAES,
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
    approx_file,
    tiny_vae_names,
)

#: ModelSamplingDiscrete's and ModelSamplingContinuousEDM's sampling choices, in ComfyUI's order.
DISCRETE_SAMPLINGS = ("eps", "v_prediction", "lcm", "x0", "img_to_img")
EDM_SAMPLINGS = ("v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow")


def _checkpoints(folders: Folders) -> list[str]:
    return folders.list_models("checkpoints")


def _vaes(folders: Folders) -> list[str]:
    """The VAE files, then ``taesd`` / ``taesdxl`` when both halves are in models/vae_approx (as ComfyUI)."""
    return folders.list_models("vae") + tiny_vae_names(folders)


def _tiny_vae(folders: Folders, name: str) -> VaeHandle | None:
    """VAELoader's handle for TAESD ``name`` (decoder + encoder), or None when a half is missing."""
    decoder, encoder = approx_file(folders, name, "decoder"), approx_file(folders, name, "encoder")
    if decoder is None or encoder is None:
        return None
    return VaeHandle(FileRef.of(decoder), "", tiny=name, encoder=FileRef.of(encoder))


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
        return ModelHandle(ref, family), ClipHandle(ref, family), VaeHandle(ref, family.checkpoint_vae_prefix)


class VAELoader(Node):
    """Load a separate VAE file (or the VAE of a checkpoint file placed in models/vae)."""

    display_name = "Load VAE"
    category = "loaders"
    inputs = (Input("vae_name", COMBO, choices=_vaes, file_folder="vae"),)
    outputs = (Output(VAE),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        tiny = _tiny_vae(folders, inputs["vae_name"]) if inputs["vae_name"] in TINY_VAES else None
        if tiny is not None:
            return repr((tiny.file, tiny.encoder))
        return file_fingerprint(folders, "vae", inputs["vae_name"])

    def run(self, ctx: RunContext, vae_name: str) -> tuple[VaeHandle]:
        from engine.sdk import files

        tiny = _tiny_vae(ctx.folders, vae_name) if vae_name in TINY_VAES else None
        if tiny is not None:
            return (tiny,)
        path = ctx.folders.model_path("vae", vae_name)
        return (VaeHandle(FileRef.of(path), files.vae_prefix(path, vae_name)),)


class ModelSamplingDiscrete(Node):
    """Read the model on SD's discrete noise levels as eps, v-prediction, LCM (50 distilled levels with
    the consistency boundary condition), x0 or img_to_img; zsnr rescales them to zero terminal SNR."""

    category = "advanced/model"
    inputs = (Input("model", MODEL), Input("sampling", COMBO, choices=DISCRETE_SAMPLINGS),
              Input("zsnr", BOOLEAN, default=False))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, sampling: str, zsnr: bool) -> tuple[ModelHandle]:
        from engine.sdk import sigmas

        if sampling in ("eps", "v_prediction"):  # the family's own reading, for code that reads it
            prediction = "v" if sampling == "v_prediction" else "eps"
            model = model.with_family(dataclasses.replace(model.family, prediction=prediction))
        return (model.with_sampling(sigmas.discrete_spec(sampling, zsnr)),)


def _sigma_input(name: str, default: float) -> Input:
    return Input(name, FLOAT, default=default, min=0.0, max=1000.0, step=0.001, extra={"round": False})


class ModelSamplingContinuousEDM(Node):
    """Sample on continuous noise levels in [sigma_min, sigma_max] (EDM's log(sigma) / 4 timestep):
    for EDM-trained SDXL models such as Playground v2.5 (edm_playground_v2.5) and EDM-style fine-tunes."""

    category = "advanced/model"
    inputs = (Input("model", MODEL), Input("sampling", COMBO, choices=EDM_SAMPLINGS),
              _sigma_input("sigma_max", 120.0), _sigma_input("sigma_min", 0.002))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, sampling: str, sigma_max: float,
            sigma_min: float) -> tuple[ModelHandle]:
        from engine.sdk import sigmas

        try:
            spec = sigmas.continuous_edm_spec(sampling, sigma_max, sigma_min)
        except ValueError as exc:
            raise ValueError(f"ModelSamplingContinuousEDM: {exc}") from None
        return (model.with_sampling(spec),)


class ModelSamplingContinuousV(Node):
    """Sample a v-prediction model on continuous noise levels with the timestep atan(sigma) * 2 / pi."""

    category = "advanced/model"
    inputs = (Input("model", MODEL), Input("sampling", COMBO, choices=("v_prediction",)),
              _sigma_input("sigma_max", 500.0), _sigma_input("sigma_min", 0.03))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, sampling: str, sigma_max: float,
            sigma_min: float) -> tuple[ModelHandle]:
        from engine.sdk import sigmas

        try:
            spec = sigmas.continuous_v_spec(sigma_max, sigma_min)
        except ValueError as exc:
            raise ValueError(f"ModelSamplingContinuousV: {exc}") from None
        return (model.with_sampling(spec),)


class ModelComputeDtype(Node):
    """Ask for the dtype the model computes in (default: the model manager's choice for the device).
    On a CPU only fp32 is practical; the model manager may keep fp32 there and log it."""

    category = "advanced/debug/model"
    inputs = (Input("model", MODEL), Input("dtype", COMBO, choices=("default", "fp32", "fp16", "bf16")))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, dtype: str) -> tuple[ModelHandle]:
        return (model.with_compute_dtype(None if dtype == "default" else dtype),)


class EpsilonScaling(Node):
    """Epsilon Scaling (Ning et al. 2024): divide each step's guided noise prediction by scaling_factor
    to reduce exposure bias."""

    type_name = "Epsilon Scaling"
    category = "model_patches/unet"
    inputs = (Input("model", MODEL),
              Input("scaling_factor", FLOAT, default=1.005, min=0.5, max=1.5, step=0.001,
                    extra={"display": "number", "advanced": True}),)
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, scaling_factor: float) -> tuple[ModelHandle]:
        from engine.sdk import sigmas

        return (model.with_sampling_patch(sigmas.EpsilonScaling(scaling_factor)),)


MODEL_LOADER_NODES = (CheckpointLoaderSimple, VAELoader, ModelSamplingDiscrete, ModelSamplingContinuousEDM,
                      ModelSamplingContinuousV, ModelComputeDtype, EpsilonScaling)
