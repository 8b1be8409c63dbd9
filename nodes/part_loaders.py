"""Loaders of model parts stored on their own, with ComfyUI's names and inputs: UNETLoader ("Load Diffusion
Model", models/diffusion_models), CLIPLoader, DualCLIPLoader and TripleCLIPLoader (models/text_encoders),
CheckpointLoader (a checkpoint with a config name) and DiffusersLoader (a diffusers-format folder in
models/diffusers).

SD3 / SD3.5 and Flux text encoders: CLIPLoader type sd3 takes one of CLIP-L, CLIP-G and T5-XXL, DualCLIPLoader
type sd3 two different ones and type flux a CLIP-L and a T5-XXL, TripleCLIPLoader all three of SD3's, each in
any order; T5's tokenizer file is kept beside the T5 file (engine/backend/t5_tokenizer.py says where).

Like CheckpointLoaderSimple they return light handles; the family comes from each part's own keys
(engine/models/parts.py), and the model manager loads the weights when a node needs them.
"""

from __future__ import annotations

from pathlib import Path
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
from nodes.model_loaders import CheckpointLoaderSimple, file_fingerprint

#: UNETLoader's weight_dtype choices (ComfyUI's order); fp8_e4m3fn_fast stores as fp8_e4m3fn.
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
#: ComfyUI's CLIPLoader and DualCLIPLoader types; Loom loads stable_diffusion, sdxl, sd3 and flux, the others say so.
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2",
              "ovis", "longcat_image")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
                   "kandinsky5", "kandinsky5_image", "ltxv", "newbie", "ace")
_DEVICE = Input("device", COMBO, choices=("default", "cpu"), optional=True, extra={"advanced": True})
_MODEL_INDEX = "model_index.json"


def _unets(folders: Folders) -> list[str]:
    return folders.list_models("diffusion_models")


def _text_encoders(folders: Folders) -> list[str]:
    return folders.list_models("text_encoders")


def _configs(folders: Folders) -> list[str]:
    return folders.list_models("configs", (".yaml",))


def _diffusers_folders(folders: Folders) -> list[str]:
    """Folders under models/diffusers holding a model_index.json, as paths relative to it."""
    found = folders.list_models("diffusers", (_MODEL_INDEX,))
    return sorted({str(Path(name).parent.as_posix()) for name in found if Path(name).name == _MODEL_INDEX})


def _warn_device(ctx: RunContext, node: str, device: str | None) -> None:
    if device == "cpu":
        ctx.log.info("%s: device cpu: Loom's model manager places text encoders itself (like ComfyUI's default "
                     "offloading); the option is accepted", node)


class UNETLoader(Node):
    """Load a diffusion model (UNet) stored on its own: bare keys, a checkpoint's prefix or diffusers' names."""

    display_name = "Load Diffusion Model"
    category = "advanced/loaders"
    inputs = (Input("unet_name", COMBO, choices=_unets, file_folder="diffusion_models"),
              Input("weight_dtype", COMBO, choices=WEIGHT_DTYPES))
    outputs = (Output(MODEL),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "diffusion_models", inputs["unet_name"])

    def run(self, ctx: RunContext, unet_name: str, weight_dtype: str) -> tuple[ModelHandle]:
        from engine.sdk import model_parts

        path = ctx.folders.model_path("diffusion_models", unet_name)
        handle = model_parts.unet_handle(path, f"UNETLoader unet_name {unet_name!r}", weight_dtype)
        ctx.log.info("%s: %s UNet, weights %s", unet_name, handle.family.label, weight_dtype)
        return (handle,)


class CLIPLoader(Node):
    """Load one text encoder: type stable_diffusion reads SD1's CLIP-L or SD2's OpenCLIP-H (and bigG alone,
    the SDXL refiner's), in transformers' or OpenCLIP's layout; type sd3 one of SD3's CLIP-L, CLIP-G, T5-XXL."""

    display_name = "Load CLIP"
    category = "advanced/loaders"
    description = ("[Recipes]\n\nstable_diffusion: clip-l (SD1.x) or OpenCLIP-H (SD2.x)\nsd3: t5 xxl / clip-g / "
                   "clip-l\nother types name model families Loom does not run yet")
    inputs = (Input("clip_name", COMBO, choices=_text_encoders, file_folder="text_encoders"),
              Input("type", COMBO, choices=CLIP_TYPES), _DEVICE)
    outputs = (Output(CLIP),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "text_encoders", inputs["clip_name"])

    def run(self, ctx: RunContext, clip_name: str, type: str = "stable_diffusion",  # noqa: A002 - ComfyUI's name
            device: str | None = None) -> tuple[ClipHandle]:
        from engine.sdk import model_parts

        _warn_device(ctx, "CLIPLoader", device)
        path = ctx.folders.model_path("text_encoders", clip_name)
        handle = model_parts.clip_handle(path, f"CLIPLoader clip_name {clip_name!r}", type)
        ctx.log.info("%s: %s text encoder", clip_name, handle.family.label)
        return (handle,)


class DualCLIPLoader(Node):
    """Load two text encoders, in either order: SDXL's (type sdxl: CLIP-L and OpenCLIP-bigG), two of SD3's (type
    sd3: CLIP-L, CLIP-G, T5-XXL) or Flux's (type flux: CLIP-L and T5-XXL)."""

    display_name = "DualCLIPLoader"
    category = "advanced/loaders"
    description = ("[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: "
                   "clip-l, t5\nother types name model families Loom does not run yet")
    inputs = (Input("clip_name1", COMBO, choices=_text_encoders, file_folder="text_encoders"),
              Input("clip_name2", COMBO, choices=_text_encoders, file_folder="text_encoders"),
              Input("type", COMBO, choices=DUAL_CLIP_TYPES), _DEVICE)
    outputs = (Output(CLIP),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        names = (inputs["clip_name1"], inputs["clip_name2"])
        return "|".join(file_fingerprint(folders, "text_encoders", name) for name in names)

    def run(self, ctx: RunContext, clip_name1: str, clip_name2: str, type: str,  # noqa: A002 - ComfyUI's name
            device: str | None = None) -> tuple[ClipHandle]:
        from engine.sdk import model_parts

        _warn_device(ctx, "DualCLIPLoader", device)
        first = ctx.folders.model_path("text_encoders", clip_name1)
        second = ctx.folders.model_path("text_encoders", clip_name2)
        where = (f"DualCLIPLoader clip_name1 {clip_name1!r}", f"DualCLIPLoader clip_name2 {clip_name2!r}")
        return (model_parts.dual_clip_handle(first, second, where, type),)


class TripleCLIPLoader(Node):
    """Load SD3's three text encoders (CLIP-L, CLIP-G and T5-XXL), in any order."""

    category = "advanced/loaders"
    description = "[Recipes]\n\nsd3: clip-l, clip-g, t5"
    inputs = tuple(Input(f"clip_name{index}", COMBO, choices=_text_encoders, file_folder="text_encoders")
                   for index in (1, 2, 3))
    outputs = (Output(CLIP),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        names = (inputs["clip_name1"], inputs["clip_name2"], inputs["clip_name3"])
        return "|".join(file_fingerprint(folders, "text_encoders", name) for name in names)

    def run(self, ctx: RunContext, clip_name1: str, clip_name2: str, clip_name3: str) -> tuple[ClipHandle]:
        from engine.sdk import model_parts

        names = (clip_name1, clip_name2, clip_name3)
        first, second, third = (ctx.folders.model_path("text_encoders", name) for name in names)
        where1, where2, where3 = (f"TripleCLIPLoader clip_name{index} {name!r}" for index, name in enumerate(names, 1))
        return (model_parts.triple_clip_handle((first, second, third), (where1, where2, where3)),)


class CheckpointLoader(Node):
    """Load a checkpoint with a config file (ComfyUI's deprecated loader): the config is accepted and logged;
    the family is recognised from the checkpoint's weights as in CheckpointLoaderSimple."""

    display_name = "Load Checkpoint With Config (DEPRECATED)"
    category = "advanced/loaders"
    # config_name carries no file_folder: Loom never reads the config, so no worker needs to hold it.
    inputs = (Input("config_name", COMBO, choices=_configs),
              Input("ckpt_name", COMBO, choices=CheckpointLoaderSimple.inputs[0].choices, file_folder="checkpoints"))
    outputs = (Output(MODEL), Output(CLIP), Output(VAE))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "checkpoints", inputs["ckpt_name"])

    def run(self, ctx: RunContext, config_name: str, ckpt_name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        ctx.log.info("CheckpointLoader: config %s is not needed: the model family is recognised from %s's "
                     "weights", config_name, ckpt_name)
        model, clip, vae = CheckpointLoaderSimple().run(ctx, ckpt_name)
        return model, clip, vae


class DiffusersLoader(Node):
    """Load a diffusers-format folder (unet/, text_encoder/[, text_encoder_2/], vae/) from models/diffusers."""

    display_name = "DiffusersLoader"
    category = "advanced/loaders/deprecated"
    # model_path names a folder, not a file: no file_folder, so cluster routing does not look for it among the
    # workers' model files (a worker without the folder fails the node, naming where it looked).
    inputs = (Input("model_path", COMBO, choices=_diffusers_folders),)
    outputs = (Output(MODEL), Output(CLIP), Output(VAE))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        index = folders.model_path("diffusers", f"{inputs['model_path']}/{_MODEL_INDEX}")
        weights = sorted(p for p in index.parent.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin"))
        return "|".join(f"{ref.path}:{ref.size}:{ref.mtime_ns}" for ref in map(FileRef.of, weights))

    def run(self, ctx: RunContext, model_path: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        from engine.sdk import model_parts

        index = ctx.folders.model_path("diffusers", f"{model_path}/{_MODEL_INDEX}")
        model, clip, vae = model_parts.diffusers_handles(index.parent, f"DiffusersLoader model_path {model_path!r}")
        ctx.log.info("%s: %s (diffusers folder)", model_path, model.family.label)
        return model, clip, vae


PART_LOADER_NODES = (UNETLoader, CLIPLoader, DualCLIPLoader, TripleCLIPLoader, CheckpointLoader, DiffusersLoader)
