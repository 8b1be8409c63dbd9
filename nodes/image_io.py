"""Nodes that read images from the input folder and write them to the output and temp folders.

Every file name goes through :class:`engine.folders.Folders`, which refuses paths that leave their
folder. Saved PNGs carry the API prompt and the editor workflow as text chunks (ComfyUI's layout),
so dropping one on the editor restores the graph.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.sdk import (
    COMBO,
    IMAGE,
    MASK,
    STRING,
    Folders,
    Input,
    Node,
    NodeOutput,
    Output,
    PathOutsideRoot,
    RunContext,
    next_counter,
    split_annotation,
)

if TYPE_CHECKING:
    from torch import Tensor

#: File endings LoadImage offers from the input folder.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


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
        from engine.sdk import files

        loaded = files.load_image_file(resolve_image(ctx.folders, image), image)
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
        from engine.sdk import files

        return (files.load_mask_file(resolve_image(ctx.folders, image), channel, image),)


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


def _output_dir(ctx: RunContext, kind: str, prefix: str, filename_prefix: str) -> tuple[Path, str]:
    """The folder a prefix (``portraits/cat``) saves into, created, and its path relative to the ``kind`` folder.

    Raises PathOutsideRoot naming ``filename_prefix`` when the folder would leave the ``kind`` folder.
    """
    root = ctx.folders.root(kind)
    subfolder = prefix.rpartition("/")[0]
    try:
        directory = ctx.folders.file_path(kind, "", subfolder)
    except PathOutsideRoot as exc:
        raise PathOutsideRoot(
            f"filename_prefix {filename_prefix!r} would save outside the {kind} folder {root}; "
            f"use a relative prefix without '..' ({exc})"
        ) from exc
    directory.mkdir(parents=True, exist_ok=True)
    rel_dir = directory.relative_to(root.resolve()).as_posix()
    return directory, "" if rel_dir == "." else rel_dir


def save_target(ctx: RunContext, kind: str, filename_prefix: str, width: int, height: int
                ) -> tuple[str, str, int]:
    """Where a prefix saves: ``(subfolder relative to the kind folder, file name stem, first free counter)``.

    The prefix is expanded (%width%, %date parts%), may name subfolders (created) and must stay inside
    the ``kind`` folder (PathOutsideRoot naming ``filename_prefix`` otherwise).
    """
    prefix = expand_prefix(filename_prefix, width, height).replace("\\", "/")
    directory, rel_dir = _output_dir(ctx, kind, prefix, filename_prefix)
    name = prefix.rpartition("/")[2]
    return rel_dir, name, next_counter(directory, name)


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
    from engine.sdk import files

    rel_dir, name, counter = save_target(ctx, kind, filename_prefix, images.shape[2], images.shape[1])
    results: list[dict[str, str]] = []
    for batch_number, image in enumerate(images):
        ctx.check_interrupted()
        data = files.png_bytes(image, ctx.prompt or None, ctx.extra_pnginfo or None, compress_level)
        base = name.replace("%batch_num%", str(batch_number))
        filename = files.save_counted(ctx.folders, kind, f"{base}_{counter:05}_.png", data, rel_dir)
        ctx.log.debug("saved %s/%s", rel_dir, filename)
        results.append({"filename": filename, "subfolder": rel_dir, "type": kind})
        counter = int(filename[len(base) + 1:-len("_.png")]) + 1  # past a name another writer took
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
