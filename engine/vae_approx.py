"""TAESD files in ``models/vae_approx``: which tiny autoencoders are there, under ComfyUI's file names.

ComfyUI looks for ``taesd_decoder.*`` / ``taesd_encoder.*`` (SD1 and SD2 latents) and
``taesdxl_decoder.*`` / ``taesdxl_encoder.*`` (SDXL latents). A preview needs only the decoder;
VAELoader offers ``taesd`` / ``taesdxl`` when both halves are there. Torch-free: VAELoader's choices
are listed while ``/object_info`` is answered.
"""

from __future__ import annotations

from pathlib import Path

from engine.folders import Folders

#: TAESD name -> the scale factor of the latents it reads (model-space latent = VAE latent * scale).
TINY_VAES: dict[str, float] = {"taesd": 0.18215, "taesdxl": 0.13025}
#: File endings tried, in order.
APPROX_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt")
#: Preview methods: none, the linear latent2rgb projection, TAESD, or auto (TAESD when its decoder is there).
PREVIEW_METHODS: tuple[str, ...] = ("none", "auto", "latent2rgb", "taesd")


def approx_file(folders: Folders, name: str, part: str) -> Path | None:
    """The file of TAESD ``name``'s ``part`` (``decoder`` or ``encoder``), or None when there is none."""
    for directory in folders.model_dirs("vae_approx"):
        for suffix in APPROX_SUFFIXES:
            path = directory / f"{name}_{part}{suffix}"
            if path.is_file():
                return path
    return None


def tiny_vae_names(folders: Folders) -> list[str]:
    """The TAESD names VAELoader offers: those whose decoder and encoder files are both present."""
    return [name for name in TINY_VAES
            if approx_file(folders, name, "decoder") is not None and approx_file(folders, name, "encoder") is not None]


def tiny_vae_for(is_sdxl: bool) -> str:
    """The TAESD that reads a family's latents: ``taesdxl`` for SDXL, ``taesd`` for SD1/SD2."""
    return "taesdxl" if is_sdxl else "taesd"


def preview_decoder(folders: Folders, method: str, is_sdxl: bool) -> Path | None:
    """The TAESD decoder a preview uses under ``method`` (``taesd`` or ``auto``), or None for latent2rgb."""
    if method not in ("taesd", "auto"):
        return None
    return approx_file(folders, tiny_vae_for(is_sdxl), "decoder")
