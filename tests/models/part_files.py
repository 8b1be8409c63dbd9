"""Model parts written on their own from a checkpoint, in the real layouts of separately stored files.

:func:`split_checkpoint` writes a checkpoint's UNet (bare keys as ComfyUI's UNETLoader files have them, with
the checkpoint's ``model.diffusion_model.`` prefix, and in diffusers' names), each text encoder (its keys
without the checkpoint prefix: transformers' ``text_model.*`` or OpenCLIP's ``transformer.resblocks.*``) and
the VAE (bare keys). :func:`write_diffusers_folder` writes a diffusers-format folder (``model_index.json``,
``unet/``, ``text_encoder/``, ``vae/``, ``scheduler/``); the VAE's diffusers names come from diffusers' own
``AutoencoderKL`` built on the meta device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from engine.backend.unet import UNetConfig
from engine.backend.vae import VAEConfig
from engine.models.convert_diffusers import UNetLayout, diffusers_vae_key_to_ldm, unet_names
from engine.models.loaders import UNET_PREFIX, VAE_PREFIX, CheckpointFile

TEXT_PREFIXES = {
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
    "sdxl_refiner": ("conditioner.embedders.0.model.",),
}


def read_all(path: Path) -> dict[str, Tensor]:
    with CheckpointFile(path) as ckpt:
        return {key: ckpt.load(key) for key in ckpt.keys()}


def _under(state: Mapping[str, Tensor], prefix: str, new_prefix: str = "") -> dict[str, Tensor]:
    return {new_prefix + key[len(prefix):]: t.contiguous() for key, t in state.items() if key.startswith(prefix)}


def _save(state: Mapping[str, Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(state), str(path))
    return path


def diffusers_unet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The checkpoint's UNet in diffusers' ``UNet2DConditionModel`` names."""
    unet = _under(state, UNET_PREFIX)
    names = unet_names(UNetLayout.from_config(UNetConfig.from_state_dict(unet)))
    return {names.to_diffusers(key): tensor for key, tensor in unet.items()}


def split_checkpoint(path: Path, out: Path, family: str = "sd1") -> dict[str, Path]:
    """Every part of the checkpoint at ``path`` as its own file under ``out``; names -> paths."""
    state = read_all(path)
    files = {
        "unet_bare": _save(_under(state, UNET_PREFIX), out / "unet_bare.safetensors"),
        "unet_prefixed": _save(_under(state, UNET_PREFIX, UNET_PREFIX), out / "unet_prefixed.safetensors"),
        "unet_diffusers": _save(diffusers_unet(state), out / "unet_diffusers.safetensors"),
        "vae": _save(_under(state, VAE_PREFIX), out / "vae.safetensors"),
    }
    for index, prefix in enumerate(TEXT_PREFIXES[family]):
        files[f"clip{index}"] = _save(_under(state, prefix), out / f"clip{index}.safetensors")
    return files


def _diffusers_vae(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    diffusers = __import__("diffusers")
    config = VAEConfig.from_state_dict(_under(state, VAE_PREFIX))
    levels = len(config.ch_mult)
    with torch.device("meta"):
        reference = diffusers.AutoencoderKL(
            in_channels=config.in_channels, out_channels=config.out_channels, latent_channels=config.z_channels,
            block_out_channels=tuple(config.ch * m for m in config.ch_mult), layers_per_block=config.num_res_blocks,
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels)
    out = {}
    for key, meta in reference.state_dict().items():
        tensor = state[VAE_PREFIX + diffusers_vae_key_to_ldm(key, levels)]
        out[key] = tensor.reshape(meta.shape).contiguous()
    return out


def write_diffusers_folder(path: Path, folder: Path, *, prediction: str = "epsilon") -> Path:
    """An SD1/SD2 checkpoint as a diffusers-format folder (safetensors weights, configs with the keys read)."""
    state = read_all(path)
    text = next(p for p in ("cond_stage_model.transformer.", "cond_stage_model.model.") if any(
        k.startswith(p) for k in state))
    _save(diffusers_unet(state), folder / "unet" / "diffusion_pytorch_model.safetensors")
    _save(_under(state, text), folder / "text_encoder" / "model.safetensors")
    _save(_diffusers_vae(state), folder / "vae" / "diffusion_pytorch_model.safetensors")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "PNDMScheduler", "prediction_type": prediction}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"]}))
    return folder
