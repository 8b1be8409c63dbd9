"""Torch-backed SDK: image datasets read from a folder of the input folder (LoadImageSetFromFolderNode,
LoadImageTextSetFromFolderNode). A node imports this module inside ``run``.

A dataset folder holds images (png, jpg, jpeg, webp; read in name order) and, for the captioned set, a caption
beside each one (``cat.png`` -> ``cat.txt``; an image without one gets an empty caption). The captioned set
also reads subfolders the way kohya's sd-scripts lay datasets out: ``10_dog/`` is read 10 times (a subfolder
without a number in front is read once), after the folder's own images. Every image must have the first one's
size unless ``resize_method`` says how to make it so: ``Stretch`` and ``Pad`` resize (Lanczos) to that size,
``Crop`` cuts it from the top-left corner (ComfyUI's choices and behaviour).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from engine import images
from engine.context import RunContext
from engine.errors import LoomError
from engine.models.handles import ClipHandle
from engine.sdk import ops

__all__ = ["IMAGE_SUFFIXES", "RESIZE_METHODS", "ImageSet", "dataset_files", "encode_captions", "read_image_set"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
RESIZE_METHODS: tuple[str, ...] = ("None", "Stretch", "Crop", "Pad")
MAX_PIXELS = 1 << 26  # per image
_REPEATS = re.compile(r"^(\d+)_")


@dataclass(frozen=True)
class ImageSet:
    images: Tensor  # IMAGE [B, H, W, 3]
    captions: list[str]  # one per image ("" without a caption file)
    files: list[Path]


def _entries(folder: Path, root: Path) -> list[Path]:
    """The visible entries of ``folder`` that stay inside ``root`` (a symlink out of the dataset is skipped)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.resolve().is_relative_to(root))


def _images_in(folder: Path, root: Path) -> list[Path]:
    return [p for p in _entries(folder, root) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def dataset_files(folder: Path, *, subfolders: bool) -> list[Path]:
    """The dataset's image files in order: the folder's own, then (``subfolders``) each subfolder's, repeated as
    its ``N_`` name prefix says."""
    root = folder.resolve()
    files = _images_in(folder, root)
    if subfolders:
        for sub in (p for p in _entries(folder, root) if p.is_dir()):
            match = _REPEATS.match(sub.name)
            files += _images_in(sub, root) * (int(match.group(1)) if match else 1)
    return files


def _open(path: Path, folder: Path) -> Image.Image:
    name = path.relative_to(folder).as_posix()
    picture = images.decode_image(path.read_bytes(), MAX_PIXELS, f"image {name!r}")
    return ImageOps.exif_transpose(picture).convert("RGB")


def _target(picture: Image.Image, width: int, height: int) -> Image.Image:
    """The image resized to ``width`` x ``height``; -1 for one side keeps the aspect ratio, -1 for both keeps it."""
    if width < 0 and height < 0:
        return picture
    if width < 0:
        width = max(1, round(picture.width * height / picture.height))
    elif height < 0:
        height = max(1, round(picture.height * width / picture.width))
    return picture.resize((width, height), Image.Resampling.LANCZOS)


def _fit(picture: Image.Image, size: tuple[int, int], method: str, name: str, node: str) -> Image.Image:
    if picture.size == size:
        return picture
    if method in ("Stretch", "Pad"):
        return picture.resize(size, Image.Resampling.LANCZOS)
    if method == "Crop":
        return picture.crop((0, 0, *size))
    raise LoomError(f"{node}: {name} is {picture.width}x{picture.height} but the first image is {size[0]}x{size[1]}; "
                    "give every image the same size or set resize_method (Stretch, Crop or Pad)")


def read_image_set(folder: Path, resize_method: str = "None", *, node: str, subfolders: bool = False,
                   width: int = -1, height: int = -1) -> ImageSet:
    """The dataset in ``folder`` as one IMAGE batch, with captions (see the module doc)."""
    if resize_method not in RESIZE_METHODS:
        raise LoomError(f"{node}: resize_method {resize_method!r}: use one of {', '.join(RESIZE_METHODS)}")
    files = dataset_files(folder, subfolders=subfolders)
    if not files:
        raise LoomError(f"{node}: the folder {folder.name!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); put the "
                        "training images there")
    arrays: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    loaded: dict[Path, np.ndarray] = {}
    for path in files:
        if path not in loaded:
            picture = _target(_open(path, folder), width, height)
            size = size or picture.size
            picture = _fit(picture, size, resize_method, repr(path.relative_to(folder).as_posix()), node)
            loaded[path] = np.asarray(picture, dtype=np.float32) / 255.0
        arrays.append(loaded[path])
    batch = torch.from_numpy(np.stack(arrays)).contiguous()
    return ImageSet(batch, [_caption(path) for path in files], files)


def _caption(image: Path) -> str:
    text = image.with_suffix(".txt")
    return text.read_text(encoding="utf-8", errors="replace").strip() if text.is_file() else ""


def encode_captions(ctx: RunContext, clip: ClipHandle, captions: Sequence[str]) -> list[list[Any]]:
    """One CONDITIONING entry per caption, in order, each encoded as CLIPTextEncode encodes a prompt (equal
    captions are encoded once)."""
    encoder = ctx.models.text_encoder(clip)
    lookup = ops.embedding_lookup(ctx.folders)
    encoded: dict[str, list[Any]] = {}
    for caption in captions:
        if caption not in encoded:
            entries = ops.encode_text(ctx, clip, encoder.tokenize(caption, embedding_lookup=lookup))
            encoded[caption] = entries[0]
        ctx.check_interrupted()
    return [[encoded[caption][0], dict(encoded[caption][1])] for caption in captions]
