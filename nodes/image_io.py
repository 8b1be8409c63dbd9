"""Nodes that read images from the input folder and write them to the output and temp folders.

Every file name goes through :class:`engine.folders.Folders`, which refuses paths that leave their
folder. Saved PNGs carry the API prompt and the editor workflow as text chunks (ComfyUI's layout),
so dropping one on the editor restores the graph.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from torch import Tensor

from engine.context import RunContext
from engine.errors import PathOutsideRoot
from engine.folders import Folders, split_annotation
from engine.node import Input, Node, NodeOutput, Output
from engine.pngmeta import png_text_info
from engine.types import COMBO, IMAGE, MASK, STRING

#: File endings LoadImage offers from the input folder.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")

#: Most pixels (summed over frames) one LoadImage decodes; bounds the memory of animated files.
MAX_LOAD_PIXELS = 1 << 28

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def input_image_choices(folders: Folders) -> list[str]:
    """The image files of the input folder (LoadImage's list), relative names, sorted."""
    return folders.list_files("input", IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# Reading


def resolve_image(folders: Folders, name: str) -> Path:
    """The path of an image named in a workflow, inside the input folder.

    A trailing ``[output]`` / ``[temp]`` / ``[input]`` (the editor's annotated names, e.g. for
    images made by the mask editor) picks that folder instead. Raises PathOutsideRoot for names
    that escape the folder and FileNotFoundError for missing files, each naming the folder.
    """
    kind, name = split_annotation(name)
    root = folders.root(kind)
    try:
        path = folders.file_path(kind, name)
    except PathOutsideRoot as exc:
        raise PathOutsideRoot(
            f"image {name!r} is outside the {kind} folder {root}: {exc}; use a name from the list"
        ) from exc
    if not path.is_file():
        raise FileNotFoundError(
            f"image {name!r} not found in the {kind} folder {root}; upload it or pick one from the list"
        )
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_fingerprint(folders: Folders, name: Any) -> str:
    """sha256 of an image file's bytes; a marker when it cannot be read (run reports why)."""
    if not isinstance(name, str):
        return "unreadable"
    try:
        return file_sha256(resolve_image(folders, name))
    except (OSError, PathOutsideRoot) as exc:
        return f"unreadable:{type(exc).__name__}"


def _frames(image: Image.Image) -> Iterator[Image.Image]:
    """The frames of an image; MPO (phone JPEGs with a depth/stereo frame) counts as one."""
    if image.format == "MPO":
        yield image
        return
    yield from ImageSequence.Iterator(image)


def _has_alpha(frame: Image.Image) -> bool:
    return "A" in frame.getbands() or "transparency" in frame.info


def frame_to_arrays(frame: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rgb [H, W, 3], alpha [H, W] or None)`` as float32 in 0..1, orientation fixed."""
    frame = ImageOps.exif_transpose(frame)
    if frame.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(frame, dtype=np.float32) / 65535.0
        grey = np.clip(grey, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1), None
    if _has_alpha(frame):
        rgba = np.asarray(frame.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3], rgba[..., 3]
    return np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0, None


@dataclass(frozen=True)
class LoadedImage:
    image: Tensor  # [B, H, W, 3]
    mask: Tensor  # [B, H, W], 1 where the pixel was transparent


def load_image_file(path: Path, log_name: str = "") -> LoadedImage:
    """Decode an image file (all frames of the first frame's size) into IMAGE and MASK."""
    name = log_name or path.name
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    try:
        with Image.open(path) as img:
            size = None
            for frame in _frames(img):
                rgb, alpha = frame_to_arrays(frame)
                if size is None:
                    size = rgb.shape[:2]
                elif rgb.shape[:2] != size:
                    continue  # ComfyUI's rule: frames of another size are left out
                if (len(images) + 1) * size[0] * size[1] > MAX_LOAD_PIXELS:
                    raise ValueError(
                        f"image {name!r} has too many pixels over its frames "
                        f"(limit {MAX_LOAD_PIXELS}); use a shorter or smaller animation"
                    )
                images.append(rgb)
                masks.append(1.0 - alpha if alpha is not None else np.zeros(size, dtype=np.float32))
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {name!r}: {exc}") from exc
    if not images:
        raise ValueError(f"image {name!r} has no frames")
    image = torch.from_numpy(np.stack(images)).contiguous()
    mask = torch.from_numpy(np.stack(masks).astype(np.float32)).contiguous()
    return LoadedImage(image=image, mask=mask)


def load_mask_file(path: Path, channel: str, log_name: str = "") -> Tensor:
    """One channel of an image's first frame as a MASK ``[1, H, W]``; alpha is inverted."""
    name = log_name or path.name
    band = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[channel]
    try:
        with Image.open(path) as img:
            rgb, alpha = frame_to_arrays(img)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {name!r}: {exc}") from exc
    if band == "A":
        values = 1.0 - alpha if alpha is not None else np.zeros(rgb.shape[:2], dtype=np.float32)
    else:
        values = rgb[..., "RGB".index(band)]
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None]


class LoadImage(Node):
    """Load an image from the input folder; MASK is 1 where the image is transparent."""

    display_name = "Load Image"
    category = "image"
    inputs = (Input("image", COMBO, choices=input_image_choices, image_upload=True, file_folder="input"),)
    outputs = (Output(IMAGE), Output(MASK))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return image_fingerprint(folders, inputs.get("image"))

    def run(self, ctx: RunContext, image: str) -> tuple[Tensor, Tensor]:
        loaded = load_image_file(resolve_image(ctx.folders, image), image)
        return (loaded.image, loaded.mask)


class LoadImageMask(Node):
    """Load one channel of an image from the input folder as a mask (alpha is inverted)."""

    display_name = "Load Image (as Mask)"
    category = "mask"
    inputs = (
        Input("image", COMBO, choices=input_image_choices, image_upload=True, file_folder="input"),
        Input("channel", COMBO, choices=("alpha", "red", "green", "blue"), default="alpha"),
    )
    outputs = (Output(MASK),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return image_fingerprint(folders, inputs.get("image"))

    def run(self, ctx: RunContext, image: str, channel: str) -> tuple[Tensor]:
        return (load_mask_file(resolve_image(ctx.folders, image), channel, image),)


# ---------------------------------------------------------------------------------------------
# Writing


def expand_prefix(prefix: str, width: int, height: int) -> str:
    """Server-side prefix variables: %width%, %height% and %year% ... %second% (local time)."""
    now = time.localtime()
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(key, value)
    return prefix


def next_counter(directory: Path, name: str) -> int:
    """1 + the highest counter of files ``{name}_{counter}_*`` in ``directory`` (1 if none).

    ``%batch_num%`` in ``name`` matches any number, so batches saved with it keep counting.
    """
    if not directory.is_dir():
        return 1
    stem = r"\d+".join(re.escape(part) for part in name.split("%batch_num%"))
    pattern = re.compile(rf"^{stem}_(\d+)_")
    highest = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def to_pil(image: Tensor) -> Image.Image:
    """One IMAGE item ``[H, W, C]`` (C = 1, 3 or 4) as an 8-bit PIL image (rounded)."""
    pixels = image.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)
    array = (pixels * 255.0).round().to(torch.uint8).numpy()
    if array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def save_images(
    ctx: RunContext,
    images: Tensor,
    filename_prefix: str,
    kind: str,
    compress_level: int,
) -> list[dict[str, str]]:
    """Write each image as ``{prefix}_{counter:05}_.png`` under the ``kind`` folder.

    The prefix may name a subfolder (``portraits/cat``); it must stay inside the folder. Returns
    the ``ui["images"]`` entries. Files are created exclusively, so nothing is ever overwritten.
    """
    root = ctx.folders.root(kind)
    prefix = expand_prefix(filename_prefix, images.shape[2], images.shape[1]).replace("\\", "/")
    subfolder, _, name = prefix.rpartition("/")
    try:
        directory = ctx.folders.file_path(kind, "", subfolder)
    except PathOutsideRoot as exc:
        raise PathOutsideRoot(
            f"filename_prefix {filename_prefix!r} would save outside the {kind} folder {root}; "
            f"use a relative prefix without '..' ({exc})"
        ) from exc
    directory.mkdir(parents=True, exist_ok=True)
    rel_dir = directory.relative_to(root.resolve()).as_posix()
    rel_dir = "" if rel_dir == "." else rel_dir
    metadata = png_text_info(ctx.prompt or None, ctx.extra_pnginfo or None)
    counter = next_counter(directory, name)
    results: list[dict[str, str]] = []
    for batch_number, image in enumerate(images):
        ctx.check_interrupted()
        picture = to_pil(image)
        base = name.replace("%batch_num%", str(batch_number))
        while True:
            filename = f"{base}_{counter:05}_.png"
            path = ctx.folders.file_path(kind, filename, rel_dir)
            try:
                handle = path.open("xb")
            except FileExistsError:
                counter += 1
                continue
            break
        with handle:
            picture.save(handle, format="PNG", pnginfo=metadata, compress_level=compress_level)
        ctx.log.debug("saved %s", path)
        results.append({"filename": filename, "subfolder": rel_dir, "type": kind})
        counter += 1
    return results


class SaveImage(Node):
    """Save images as PNGs in the output folder, with the workflow embedded."""

    display_name = "Save Image"
    category = "image"
    output_node = True
    outputs = ()
    inputs = (
        Input("images", IMAGE, tooltip="The images to save."),
        Input(
            "filename_prefix",
            STRING,
            default="Loom",
            tooltip="File name prefix; may start with subfolders (portraits/cat) and use "
            "%batch_num%, %width%, %height%, %year%, %month%, %day%.",
        ),
    )

    def run(self, ctx: RunContext, images: Tensor, filename_prefix: str) -> NodeOutput:
        saved = save_images(ctx, images, filename_prefix, "output", compress_level=4)
        return NodeOutput(values=(), ui={"images": saved})


class PreviewImage(Node):
    """Show images in the editor (saved to the temp folder)."""

    display_name = "Preview Image"
    category = "image"
    output_node = True
    outputs = ()
    inputs = (Input("images", IMAGE),)

    def run(self, ctx: RunContext, images: Tensor) -> NodeOutput:
        suffix = "".join(random.choices("abcdefghijklmnopqrstuvwxyz", k=5))
        saved = save_images(ctx, images, f"LoomPreview_{suffix}", "temp", compress_level=1)
        return NodeOutput(values=(), ui={"images": saved})


IMAGE_IO_NODES: tuple[type[Node], ...] = (LoadImage, LoadImageMask, SaveImage, PreviewImage)
