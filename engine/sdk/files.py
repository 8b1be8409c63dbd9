"""Torch-backed SDK file access: model files, image files and latent files.

A node imports this module inside ``run`` or ``fingerprint`` (``from engine.sdk import files``), never
at module level, so registering nodes does not load torch. It re-exports what the loader and file
nodes need from engine/models, engine/backend and the engine's image and file modules:

* model files: checkpoint inspection (:class:`CheckpointFile`, :func:`detect_family`,
  :func:`checkpoint_family`, :data:`VAE_PREFIX`, :func:`vae_prefix`), LoRA files (:func:`split_key`,
  :func:`check_lora_file`), ControlNet files (:func:`read_controlnet`, :func:`describe_controlnet`);
* image files: decoding to IMAGE / MASK (:func:`load_image_file`, :func:`load_mask_file`), one IMAGE
  item as PNG bytes with the workflow text chunks (:func:`png_bytes`), an IMAGE batch as an animated
  WebP or APNG (:func:`animated_webp_bytes`, :func:`animated_png_bytes`), and writing a new counted file
  through the FileStore (:func:`save_counted`);
* ``.latent`` files: :func:`read_latent_file`, :func:`write_latent_file`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from engine import images
from engine.backend.animation import frame_arrays, frame_duration_ms
from engine.backend.image_arrays import channel_mask, frames_to_tensors, image_to_array
from engine.backend.latent_files import read_latent_file, write_latent_file
from engine.files import FileStore, counted_names
from engine.folders import Folders
from engine.images import ImageError, ImageTooLarge
from engine.models.control_lora_load import describe_control_lora
from engine.models.controlnet_convert import read_controlnet
from engine.models.inspection import check_lora_file, checkpoint_family, describe_controlnet, vae_prefix
from engine.models.loaders import VAE_PREFIX, CheckpointFile, UnsupportedModel, detect_family
from engine.models.lora_formats import split_key

__all__ = [
    "MAX_LOAD_PIXELS", "VAE_PREFIX", "CheckpointFile", "ImageError", "ImageTooLarge", "LoadedImage",
    "UnsupportedModel", "animated_png_bytes", "animated_webp_bytes", "check_lora_file", "checkpoint_family",
    "describe_control_lora", "describe_controlnet", "detect_family", "load_image_file", "load_mask_file",
    "png_bytes", "read_controlnet",
    "read_latent_file", "save_counted", "split_key", "vae_prefix", "write_latent_file",
]

#: Most pixels (summed over frames) one LoadImage decodes; bounds the memory of animated files.
MAX_LOAD_PIXELS = 1 << 28


@dataclass(frozen=True)
class LoadedImage:
    image: Tensor  # [B, H, W, 3]
    mask: Tensor  # [B, H, W], 1 where the pixel was transparent


def load_image_file(path: Path, name: str = "") -> LoadedImage:
    """Every frame of the first frame's size as IMAGE and MASK; ImageError (a ValueError) naming ``name``."""
    frames = images.read_frames(path, MAX_LOAD_PIXELS, f"image {name or path.name!r}")
    image, mask = frames_to_tensors(frames)
    return LoadedImage(image=image, mask=mask)


def load_mask_file(path: Path, channel: str, name: str = "") -> Tensor:
    """One channel (alpha, red, green, blue) of an image's first frame as a MASK ``[1, H, W]``; alpha inverted."""
    picture = images.decode_image(path.read_bytes(), MAX_LOAD_PIXELS, f"image {name or path.name!r}")
    return channel_mask(images.frame_to_arrays(picture), channel)


def png_bytes(image: Tensor, prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None,
              compress_level: int) -> bytes:
    """One IMAGE item ``[H, W, C]`` as 8-bit PNG bytes carrying ``prompt`` and ``extra_pnginfo`` as text chunks."""
    picture = images.array_to_image(image_to_array(image))
    return images.encode_png(picture, prompt=prompt, extra_pnginfo=extra_pnginfo, compress_level=compress_level)


def animated_png_bytes(batch: Tensor, fps: float, compress_level: int, prompt: Mapping[str, Any] | None,
                       extra_pnginfo: Mapping[str, Any] | None) -> bytes:
    """An IMAGE batch as one APNG (a frame per item, 8-bit as ComfyUI converts) with its ``comf`` metadata chunks."""
    frames = [images.array_to_image(array) for array in frame_arrays(batch)]
    return images.encode_animated_png(frames, frame_duration_ms(fps), prompt=prompt,
                                      extra_pnginfo=extra_pnginfo, compress_level=compress_level)


def animated_webp_bytes(batch: Tensor, fps: float, *, lossless: bool, quality: int, method: int,
                        prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None) -> bytes:
    """An IMAGE batch as one animated WebP (``method`` 0 fastest .. 6 slowest) with ComfyUI's EXIF metadata."""
    frames = [images.array_to_image(array) for array in frame_arrays(batch)]
    return images.encode_animated_webp(frames, frame_duration_ms(fps), prompt=prompt, extra_pnginfo=extra_pnginfo,
                                       lossless=lossless, quality=quality, method=method)


def save_counted(folders: Folders, kind: str, filename: str, data: bytes, subfolder: str = "") -> str:
    """Write ``data`` as a new file ``filename`` (``Loom_00001_.png``) or, when that is taken, the next free
    counter; the name written. Never overwrites, never reuses a file."""
    return FileStore(folders).save(kind, filename, data, subfolder=subfolder, names=counted_names, reuse_same=False)
