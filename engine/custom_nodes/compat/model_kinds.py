"""ComfyUI's model folder names on Loom's model folders, plus the folders and kinds packs register.

ComfyUI names a kind of model file by its folder name (``"checkpoints"``, ``"loras"``, ...); ``"clip"``
and ``"unet"`` are older names of ``"text_encoders"`` and ``"diffusion_models"``. A kind's folders are
Loom's model folders of that kind (:meth:`engine.folders.Folders.model_dirs`), then the folders packs
added (``CompatRuntime.extra_model_dirs``), in the order added. Loom's own folders come first, also
for folders a pack adds with ``is_default=True`` (which go first among the added ones).

A kind Loom does not know exists once a pack registers it; before that, asking for its folders raises
KeyError, as ComfyUI does, so ``"x" in folder_names_and_paths`` tests keep working.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from engine.custom_nodes.runtime import CompatRuntime
from engine.folders import MODEL_FOLDERS

__all__ = ["BASE_PATH", "LEGACY_NAMES", "SUPPORTED_PT_EXTENSIONS", "add_dir", "canonical", "default_extensions",
           "is_kind", "kind_dirs", "kind_extensions", "kind_names", "loom_dirs", "set_kind"]

#: Loom's install folder (where main.py is): ComfyUI's ``base_path``.
BASE_PATH = Path(__file__).resolve().parents[3]

#: The file endings ComfyUI lists in most model folders.
SUPPORTED_PT_EXTENSIONS: frozenset[str] = frozenset(
    {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})

#: ComfyUI's older folder names and the kinds they mean now.
LEGACY_NAMES: dict[str, str] = {"unet": "diffusion_models", "clip": "text_encoders"}

#: Kinds ComfyUI knows beyond Loom's MODEL_FOLDERS; they live in a same-named folder of a model root.
_COMFY_ONLY_KINDS: tuple[str, ...] = ("latent_upscale_models", "classifiers", "model_patches", "audio_encoders",
                                      "custom_nodes")

#: Kinds whose listing is not filtered by SUPPORTED_PT_EXTENSIONS (ComfyUI's own choices).
_SPECIAL_EXTENSIONS: dict[str, frozenset[str]] = {
    "configs": frozenset({".yaml"}),
    "diffusers": frozenset({"folder"}),  # ComfyUI lists no files here; loaders walk the folders themselves
    "classifiers": frozenset({""}),  # files without an ending
    "custom_nodes": frozenset(),  # every file
}


def canonical(folder_name: str) -> str:
    """The kind a ComfyUI folder name means (``"clip"`` -> ``"text_encoders"``)."""
    return LEGACY_NAMES.get(folder_name, folder_name)


def _builtin_kinds() -> tuple[str, ...]:
    return (*MODEL_FOLDERS, *_COMFY_ONLY_KINDS)


def kind_names(runtime: CompatRuntime) -> list[str]:
    """Every kind: ComfyUI's and Loom's, then the ones packs registered, in that order."""
    names = list(_builtin_kinds())
    for kind in (*runtime.extra_model_dirs, *runtime.extra_extensions):
        if kind not in names:
            names.append(kind)
    return names


def is_kind(runtime: CompatRuntime, folder_name: str) -> bool:
    """Whether ``folder_name`` names a known or registered kind."""
    kind = canonical(folder_name)
    return kind in _builtin_kinds() or kind in runtime.extra_model_dirs or kind in runtime.extra_extensions


def default_extensions(kind: str) -> frozenset[str]:
    """The endings ComfyUI lists for a built-in kind; none (every file) for a kind a pack made up."""
    if kind in _SPECIAL_EXTENSIONS:
        return _SPECIAL_EXTENSIONS[kind]
    return SUPPORTED_PT_EXTENSIONS if kind in _builtin_kinds() else frozenset()


def loom_dirs(runtime: CompatRuntime, kind: str) -> list[Path]:
    """Loom's own folders of a kind: the existing ones, else where the first model root would hold it."""
    if kind == "custom_nodes":
        return [BASE_PATH / "custom_nodes"]
    if kind not in _builtin_kinds():
        return []
    folders = runtime.folders
    found = folders.model_dirs(kind)
    if not found and folders.model_roots:
        found = [folders.model_roots[0] / MODEL_FOLDERS.get(kind, (kind,))[0]]
    return found


def kind_dirs(runtime: CompatRuntime, folder_name: str) -> list[Path]:
    """A kind's folders, Loom's first; KeyError for a kind nobody registered (ComfyUI's behaviour)."""
    kind = canonical(folder_name)
    if not is_kind(runtime, kind):
        raise KeyError(folder_name)
    dirs = loom_dirs(runtime, kind)
    for extra in runtime.extra_model_dirs.get(kind, []):
        if extra not in dirs:
            dirs.append(extra)
    return dirs


def kind_extensions(runtime: CompatRuntime, folder_name: str) -> set[str]:
    """The endings a kind lists: ComfyUI's defaults plus those packs registered (empty: every file)."""
    kind = canonical(folder_name)
    return set(default_extensions(kind)) | runtime.extra_extensions.get(kind, set())


def add_dir(runtime: CompatRuntime, folder_name: str, directory: Path, *, first: bool = False) -> None:
    """Register one more folder of a kind (a new kind when unknown); ``first`` puts it before other added ones."""
    kind = canonical(folder_name)
    extras = runtime.extra_model_dirs.setdefault(kind, [])
    if directory in loom_dirs(runtime, kind):
        return
    if directory in extras:
        if not first:
            return
        extras.remove(directory)
    if first:
        extras.insert(0, directory)
    else:
        extras.append(directory)


def set_kind(runtime: CompatRuntime, folder_name: str, dirs: Iterable[str | os.PathLike[str]],
             extensions: Iterable[str]) -> None:
    """Replace a kind's added folders and endings with ``dirs`` and ``extensions`` (``folder_names_and_paths[k] =
    (dirs, exts)``); Loom's own folders of the kind stay, whether or not ``dirs`` names them."""
    kind = canonical(folder_name)
    own = loom_dirs(runtime, kind)
    extras: list[Path] = []
    for directory in (Path(d) for d in dirs):
        if directory not in own and directory not in extras:
            extras.append(directory)
    runtime.extra_model_dirs[kind] = extras
    runtime.extra_extensions[kind] = {str(e) for e in extensions} - default_extensions(kind)
