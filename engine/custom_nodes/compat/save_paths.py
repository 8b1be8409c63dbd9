"""ComfyUI's ``folder_paths.get_save_image_path``: where a saving node writes, and its next counter.

Facts of ComfyUI's interface kept here: ``%width%``, ``%height%``, ``%year%``, ``%month%``, ``%day%``,
``%hour%``, ``%minute%`` and ``%second%`` in the prefix are replaced (two digits for all but the year, local
time); a prefix ``sub/dir/name`` saves into ``output_dir/sub/dir`` (created when missing) as ``name``; the
counter is one more than the highest ``NNNNN`` of the files there called ``name_NNNNN_...`` (compared
case-insensitively where the file system is), or 1. A prefix that would leave ``output_dir`` is refused.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine.errors import PathOutsideRoot
from engine.folders import path_problem

__all__ = ["SavePath", "get_save_image_path", "substitute_vars"]

SavePath = tuple[str, str, int, str, str]


def substitute_vars(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """``prefix`` with ComfyUI's ``%width%``, ``%height%`` and date/time variables filled in."""
    now = now if now is not None else time.localtime()
    values = {
        "%width%": str(width), "%height%": str(height), "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02d}", "%day%": f"{now.tm_mday:02d}", "%hour%": f"{now.tm_hour:02d}",
        "%minute%": f"{now.tm_min:02d}", "%second%": f"{now.tm_sec:02d}",
    }
    for name, value in values.items():
        prefix = prefix.replace(name, value)
    return prefix


def _counter_of(entry: str, filename: str) -> int | None:
    """The number of a file named ``{filename}_{number}_...``, or None when the name does not fit."""
    stem_len = len(filename)
    if os.path.normcase(entry[:stem_len]) != os.path.normcase(filename) or entry[stem_len:stem_len + 1] != "_":
        return None
    digits = entry[stem_len + 1:].split("_")[0]
    return int(digits) if digits.isdigit() else 0


def next_counter(folder: Path, filename: str) -> int:
    """1 + the highest counter among ``folder``'s files named ``{filename}_NNNNN_``; 1 when none."""
    counters = [c for entry in os.listdir(folder) if (c := _counter_of(entry, filename)) is not None]
    return max(counters, default=0) + 1


def _split_prefix(prefix: str, output_dir: str) -> tuple[str, str]:
    """``(subfolder, filename)`` of a prefix; PathOutsideRoot when it would leave ``output_dir``."""
    norm = os.path.normpath(prefix.replace("\\", "/")) if prefix else ""
    subfolder, filename = os.path.split(norm)
    problem = path_problem(prefix) or path_problem(norm)
    if problem is not None or not filename or filename in (".", ".."):
        reason = problem or "names no file"
        raise PathOutsideRoot(f"Saving outside the output folder is not allowed: filename_prefix {prefix!r} "
                              f"{reason} (output folder {output_dir}); use a relative prefix such as 'sub/name'")
    return subfolder, filename


def get_save_image_path(filename_prefix: str, output_dir: str | os.PathLike[str], image_width: int = 0,
                        image_height: int = 0) -> SavePath:
    """``(full_output_folder, filename, counter, subfolder, filename_prefix)`` as ComfyUI returns them."""
    if "%" in filename_prefix:
        filename_prefix = substitute_vars(filename_prefix, image_width, image_height)
    root = os.fspath(output_dir)
    subfolder, filename = _split_prefix(filename_prefix, root)
    folder = Path(root, subfolder)
    real_root = Path(root).resolve()
    real_folder = folder.resolve()
    if real_folder != real_root and real_root not in real_folder.parents:
        raise PathOutsideRoot(f"Saving outside the output folder is not allowed: {folder} leads out of {root}")
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder), filename, next_counter(folder, filename), subfolder, filename_prefix
