"""``folder_paths.folder_names_and_paths``: ComfyUI's ``{kind: (folders, endings)}`` dict as a live view.

Packs read it (``folder_names_and_paths["checkpoints"][0]``), test it (``"ultralytics" in ...``) and write
it to register kinds of their own (``folder_names_and_paths["ultralytics"] = ([path], {".pt"})``) or add to
one (``folder_names_and_paths["ipadapter"][0].append(path)``). Every write lands in the active
:class:`engine.custom_nodes.runtime.CompatRuntime` (``extra_model_dirs``, ``extra_extensions``), so Loom's
listings and ``get_full_path`` see it; the view reads :func:`engine.custom_nodes.runtime.active` on each use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, SupportsIndex

from engine.custom_nodes.compat import model_kinds
from engine.custom_nodes.runtime import active

__all__ = ["FolderTable"]

Entry = tuple[list[str], set[str]]


class _LiveDirs(list[str]):
    """A kind's folder list whose appends and inserts register the folders."""

    def __init__(self, kind: str, items: Iterable[str]) -> None:
        super().__init__(items)
        self._kind = kind

    def _sync(self) -> None:
        runtime = active()
        model_kinds.set_kind(runtime, self._kind, list(self), model_kinds.kind_extensions(runtime, self._kind))

    def append(self, item: str) -> None:
        super().append(os.fspath(item))
        self._sync()

    def insert(self, index: SupportsIndex, item: str) -> None:
        super().insert(index, os.fspath(item))
        self._sync()

    def extend(self, items: Iterable[str]) -> None:
        super().extend(os.fspath(i) for i in items)
        self._sync()


class _LiveExtensions(set[str]):
    """A kind's endings whose additions register them."""

    def __init__(self, kind: str, items: Iterable[str]) -> None:
        super().__init__(items)
        self._kind = kind

    def _sync(self) -> None:
        runtime = active()
        dirs = [str(d) for d in model_kinds.kind_dirs(runtime, self._kind)]
        model_kinds.set_kind(runtime, self._kind, dirs, set(self))

    def add(self, item: str) -> None:
        super().add(item)
        self._sync()

    def update(self, *others: Iterable[str]) -> None:
        super().update(*others)
        self._sync()


class FolderTable(MutableMapping[str, Entry]):
    """``{kind: (folders as str, endings)}`` of the active runtime; writes register folders and kinds."""

    def __getitem__(self, folder_name: str) -> Entry:
        runtime = active()
        kind = model_kinds.canonical(folder_name)
        dirs = model_kinds.kind_dirs(runtime, kind)  # KeyError for a kind nobody registered
        return (_LiveDirs(kind, (str(d) for d in dirs)),
                _LiveExtensions(kind, model_kinds.kind_extensions(runtime, kind)))

    def __setitem__(self, folder_name: str, value: Any) -> None:
        dirs, extensions = _unpack(folder_name, value)
        model_kinds.set_kind(active(), folder_name, dirs, extensions)

    def __delitem__(self, folder_name: str) -> None:
        """Forget what packs added to a kind (Loom's own kinds stay; a pack's kind goes)."""
        runtime = active()
        kind = model_kinds.canonical(folder_name)
        if not model_kinds.is_kind(runtime, kind):
            raise KeyError(folder_name)
        runtime.extra_model_dirs.pop(kind, None)
        runtime.extra_extensions.pop(kind, None)

    def __contains__(self, folder_name: object) -> bool:
        return isinstance(folder_name, str) and model_kinds.is_kind(active(), folder_name)

    def __iter__(self) -> Iterator[str]:
        return iter(model_kinds.kind_names(active()))

    def __len__(self) -> int:
        return len(model_kinds.kind_names(active()))

    def __repr__(self) -> str:
        return f"FolderTable({dict(self.items())!r})"


def _unpack(folder_name: str, value: Any) -> tuple[list[str], set[str]]:
    """``(folders, endings)`` from what a pack assigned; TypeError naming the kind otherwise."""
    try:
        dirs, extensions = value
    except (TypeError, ValueError) as exc:
        raise TypeError(f"folder_names_and_paths[{folder_name!r}] takes a (folders, extensions) pair, "
                        f"not {type(value).__name__}") from exc
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    return [os.fspath(d) for d in dirs], {str(e) for e in extensions}
