"""``folder_paths``: ComfyUI's module of folder look-ups, onto the active Loom instance's folders.

Written from ComfyUI's interface (names, signatures, return shapes), not its code. Model kinds and the
folders packs add live in :mod:`engine.custom_nodes.compat.model_kinds`; ``folder_names_and_paths`` is the
live view of :mod:`engine.custom_nodes.compat.folder_table`; ``get_save_image_path`` is
:mod:`engine.custom_nodes.compat.save_paths`. Values that depend on the Loom instance (``models_dir``,
``output_directory``, ...) are read through a module ``__getattr__`` (PEP 562), so they are right whenever
a pack reads them, import time included.

Names from a pack that would leave their folder (``..``, absolute paths) are refused: ``get_full_path``
returns None for them and the annotated-path functions raise :class:`engine.errors.PathOutsideRoot`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from engine.custom_nodes.compat import model_kinds
from engine.custom_nodes.compat.folder_table import FolderTable
from engine.custom_nodes.compat.save_paths import get_save_image_path
from engine.custom_nodes.runtime import active
from engine.errors import PathOutsideRoot
from engine.folders import join_inside, path_problem, resolve_inside, split_annotation, walk_tree

__all__ = [
    "add_model_folder_path", "annotated_filepath", "exists_annotated_filepath", "filter_files_extensions",
    "folder_names_and_paths", "get_annotated_filepath", "get_directory_by_type", "get_filename_list",
    "get_filename_list_", "get_folder_paths", "get_full_path", "get_full_path_or_raise", "get_input_directory",
    "get_output_directory", "get_save_image_path", "get_temp_directory", "map_legacy", "recursive_search",
    "supported_pt_extensions",
]

log = logging.getLogger(__name__)

#: The endings ComfyUI lists in most model folders (a fresh set; a pack adding to it changes no listing).
supported_pt_extensions: set[str] = set(model_kinds.SUPPORTED_PT_EXTENSIONS)
#: ``{kind: (folders, endings)}``; writes register folders and kinds with the active runtime.
folder_names_and_paths = FolderTable()


def __getattr__(name: str) -> str:
    """The instance-dependent module values: ``base_path``, ``models_dir``, ``output_directory``, ``input_directory``
    and ``temp_directory`` (PEP 562)."""
    if name == "base_path":
        return str(model_kinds.BASE_PATH)
    if name == "models_dir":
        roots = active().folders.model_roots
        return str(roots[0]) if roots else str(model_kinds.BASE_PATH / "models")
    if name in ("output_directory", "input_directory", "temp_directory"):
        return str(active().folders.root(name.removesuffix("_directory")))
    raise AttributeError(f"Loom's folder_paths has no attribute {name!r}")


def map_legacy(folder_name: str) -> str:
    """The current name of an old folder name (``"clip"`` -> ``"text_encoders"``, ``"unet"`` ->
    ``"diffusion_models"``)."""
    return model_kinds.canonical(folder_name)


def get_input_directory() -> str:
    """The input folder."""
    return str(active().folders.input_dir)


def get_output_directory() -> str:
    """The output folder."""
    return str(active().folders.output_dir)


def get_temp_directory() -> str:
    """The temp folder."""
    return str(active().folders.temp_dir)


def get_directory_by_type(type_name: str) -> str | None:
    """The folder of ``"input"``, ``"output"`` or ``"temp"``; None for any other name."""
    if type_name not in ("input", "output", "temp"):
        return None
    return str(active().folders.root(type_name))


def get_folder_paths(folder_name: str) -> list[str]:
    """A kind's folders (a copy); KeyError for a kind nobody registered."""
    return [str(d) for d in model_kinds.kind_dirs(active(), folder_name)]


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """Add a folder to a kind (registering the kind when new); ``is_default`` puts it first among added folders."""
    model_kinds.add_dir(active(), folder_name, Path(full_folder_path), first=is_default)
    log.debug("custom nodes: model folder %s added to %r", full_folder_path, folder_name)


def filter_files_extensions(files: Collection[str], extensions: Collection[str]) -> list[str]:
    """The names of ``files`` with one of ``extensions`` (compared lower-case), sorted; every name when none given."""
    wanted = {e.lower() for e in extensions}
    return sorted(f for f in files if not wanted or os.path.splitext(f)[1].lower() in wanted)


def _walk(directory: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` following links, each real folder once (a link loop ends), hidden folders skipped."""
    return walk_tree(directory, follow_links=True)


def recursive_search(directory: str, excluded_dir_names: list[str] | None = None) -> tuple[list[str], dict[str, float]]:
    """Relative names of the files under ``directory`` and ``{folder: mtime}`` of the folders walked."""
    root = Path(directory)
    if not root.is_dir():
        return [], {}
    excluded = set(excluded_dir_names or ())
    files: list[str] = []
    folders: dict[str, float] = {}
    for dirpath, dirnames, filenames in _walk(root):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        folders[dirpath] = os.path.getmtime(dirpath)
        files.extend(os.path.relpath(os.path.join(dirpath, name), root) for name in filenames)
    return files, folders


def get_filename_list_(folder_name: str) -> tuple[list[str], dict[str, float], float]:
    """``(names, {folder: mtime}, time)``: a kind's files as ComfyUI's uncached listing returns them."""
    runtime = active()
    extensions = model_kinds.kind_extensions(runtime, folder_name)
    names: set[str] = set()
    folders: dict[str, float] = {}
    for directory in model_kinds.kind_dirs(runtime, folder_name):
        files, walked = recursive_search(str(directory), excluded_dir_names=[".git"])
        names.update(Path(f).as_posix() for f in filter_files_extensions(files, extensions))
        folders.update(walked)
    return sorted(names), folders, time.perf_counter()


def get_filename_list(folder_name: str) -> list[str]:
    """A kind's file names relative to its folders (``sub/x.safetensors``), sorted; KeyError for an unknown kind."""
    return get_filename_list_(folder_name)[0]


def get_full_path(folder_name: str, filename: str) -> str | None:
    """The path of ``filename`` in the first of a kind's folders that has it; None when missing, for an unknown
    kind, or for a name that would leave the folder."""
    runtime = active()
    if not model_kinds.is_kind(runtime, folder_name):
        return None
    problem = path_problem(filename)
    if problem is not None:
        log.warning("custom nodes: refused model name %r for %r: it %s", filename, folder_name, problem)
        return None
    for directory in model_kinds.kind_dirs(runtime, folder_name):
        path = join_inside(directory, filename)
        if path.is_file():
            return str(path)
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    """:func:`get_full_path`, or FileNotFoundError naming the folder and the file."""
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """``(name, folder)`` of ``"name [output]"``-style references; folder None for a plain name."""
    kind, plain = split_annotation(name, default_kind="")
    return (plain, str(active().folders.root(kind))) if kind else (name, None)


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    """The path of an annotated name (plain names in ``default_dir``, else the input folder); PathOutsideRoot for
    a name that would leave its folder."""
    plain, base = annotated_filepath(name)
    if base is None and default_dir is not None:
        return str(join_inside(Path(default_dir), plain))
    # input/output/temp: links that lead out of the folder are refused too, as everywhere in Loom
    return str(resolve_inside(Path(base if base is not None else get_input_directory()), plain))


def exists_annotated_filepath(name: str) -> bool:
    """Whether an annotated name (plain names in the input folder) names an existing file or folder."""
    try:
        return os.path.exists(get_annotated_filepath(name))
    except PathOutsideRoot:
        return False
