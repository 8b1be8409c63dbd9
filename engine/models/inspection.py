"""What a model file holds, read from its keys and shapes without loading weights.

The loader nodes call these to fail early, naming the file, when a file is in the wrong folder
(a checkpoint picked as a LoRA, a LoRA as a ControlNet, ...): checkpoint family, a VAE file's key
prefix, whether a file holds LoRA weights, what ControlNet a file holds.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelError
from engine.models.control_models import describe_control_file
from engine.models.families import ModelFamily
from engine.models.loaders import VAE_PREFIX, CheckpointFile, detect_family
from engine.models.lora_formats import split_key

__all__ = ["checkpoint_family", "check_lora_file", "describe_controlnet", "vae_prefix"]


def checkpoint_family(path: Path) -> ModelFamily:
    """The family of the Stable Diffusion checkpoint at ``path`` (UnsupportedModel when it is none)."""
    with CheckpointFile(path) as ckpt:
        return detect_family(ckpt)


def vae_prefix(path: Path, name: str) -> str:
    """The key prefix of the VAE in ``path``: ``first_stage_model.`` (or Flux's ``vae.``) in a checkpoint, ``""`` in a
    VAE file.

    ValueError naming ``name`` when the file holds no VAE decoder.
    """
    with CheckpointFile(path) as ckpt:
        prefix = next((p for p in (VAE_PREFIX, "vae.") if ckpt.has_prefix(p + "decoder.")), "")
        if not ckpt.has_prefix(prefix + "decoder.conv_in."):
            raise ValueError(f"{name} holds no VAE decoder (no {prefix}decoder.conv_in.weight); pick a VAE file")
    return prefix


def check_lora_file(path: Path, name: str) -> None:
    """ModelError naming ``name`` unless the file at ``path`` holds LoRA keys of a supported kind."""
    with CheckpointFile(path) as lora:
        keys = lora.keys()
    known = [key for key in keys if (split := split_key(key)) is not None and not split[1].startswith("unsupported")]
    if not known:
        sample = ", ".join(sorted(keys)[:4]) or "no tensors"
        raise ModelError(f"lora_name: {name} holds no LoRA weights (found {sample}); a checkpoint belongs in "
                         "models/checkpoints, a LoRA has lora_up/lora_down (or lora_A/lora_B, hada_, lokr_) keys")


def describe_controlnet(path: Path, *, difference_ok: bool = False) -> str:
    """What ControlNet (or T2I-Adapter) the file at ``path`` holds; UnsupportedModel naming the file when it
    is none, or when it is a difference ControlNet and ``difference_ok`` is False (DiffControlNetLoader's)."""
    return describe_control_file(path, difference_ok=difference_ok)
