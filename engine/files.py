"""The one way Loom writes a file into its input, output and temp folders.

:class:`FileStore` resolves every name through :class:`engine.folders.Folders` (nothing lands outside
its folder) and writes so that a reader never sees half a file:

* :meth:`FileStore.save` picks a free name: the requested one, else the next one its naming policy
  offers (uploads: ``cat (1).png``; images named with a counter: the next counter). A name that
  already holds the very same bytes is reused instead of written again. The bytes go to a hidden
  temporary file first, which is then hard-linked under the chosen name: the link fails when the
  name is taken, so two writers (threads or processes) never clobber each other.
* :meth:`FileStore.put` writes exactly one name, replacing what is there (temporary file +
  ``os.replace``), and leaves a file that already holds the same bytes untouched (its mtime, and
  so a LoadImage fingerprint, stays).

Temporary files start with a dot, so folder listings never show them. No torch here.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.errors import LoomError
from engine.folders import Folders

#: A naming policy: the names to try, in order, for a requested file name (the first is itself).
NamePolicy = Callable[[str], Iterator[str]]

#: Most names :meth:`FileStore.save` tries before giving up.
MAX_CANDIDATES = 100_000

_COUNTED = re.compile(r"^(?P<stem>.*_)(?P<counter>\d+)(?P<rest>_[^/]*)$")
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK})
_CHUNK = 1 << 20


class NoFreeName(LoomError):
    """Every name a policy offered for a file is taken by other bytes."""


def numbered_names(filename: str) -> Iterator[str]:
    """``cat.png``, ``cat (1).png``, ``cat (2).png``, ... (ComfyUI's rule for uploads)."""
    yield filename
    stem, ext = os.path.splitext(filename)
    for index in itertools.count(1):
        yield f"{stem} ({index}){ext}"


def counted_names(filename: str) -> Iterator[str]:
    """``Loom_00001_.png``, ``Loom_00002_.png``, ...: the counter of a SaveImage-style name counts up
    (keeping its width); any other name gets ``-1``, ``-2``, ... before its ending."""
    yield filename
    match = _COUNTED.match(filename)
    if match:
        width = len(match["counter"])
        for counter in itertools.count(int(match["counter"]) + 1):
            yield f"{match['stem']}{counter:0{width}d}{match['rest']}"
    stem, ext = os.path.splitext(filename)
    for index in itertools.count(1):
        yield f"{stem}-{index}{ext}"


def same_bytes(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a file holding exactly ``data`` (compared in chunks; False if unreadable)."""
    try:
        if not path.is_file() or path.stat().st_size != len(data):
            return False
        with path.open("rb") as handle:
            for offset in range(0, len(data), _CHUNK):
                if handle.read(_CHUNK) != data[offset:offset + _CHUNK]:
                    return False
        return True
    except OSError:
        return False


def _temporary(directory: Path, data: bytes) -> Path:
    """A hidden file in ``directory`` holding ``data`` (same file system, so link/replace are atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".loom-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a mix."""
    temporary = _temporary(path.parent, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _claim(temporary: Path, path: Path, data: bytes) -> bool:
    """Give ``path`` the temporary file's bytes if no file has that name; False when it is taken."""
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    try:  # a file system without hard links: exclusive create (a reader may see it being written)
        with path.open("xb") as handle:
            handle.write(data)
        return True
    except FileExistsError:
        return False


def save_free(path: Path, data: bytes, *, names: NamePolicy = numbered_names, reuse_same: bool = True) -> Path:
    """Write ``data`` under the first name ``names(path.name)`` offers that is free in ``path``'s folder
    (or, with ``reuse_same``, already holds these bytes); the path written. Raises NoFreeName."""
    temporary = _temporary(path.parent, data)
    try:
        for name in itertools.islice(names(path.name), MAX_CANDIDATES):
            candidate = path.with_name(name)
            if _claim(temporary, candidate, data):
                return candidate
            if reuse_same and same_bytes(candidate, data):
                return candidate
    finally:
        temporary.unlink(missing_ok=True)
    raise NoFreeName(f"no free file name like {path.name!r} in {path.parent}: {MAX_CANDIDATES} names are taken; "
                     "move some files away or pick another name")


def claim_free(temporary: Path, path: Path, *, names: NamePolicy = counted_names) -> Path:
    """Give a finished hidden file in ``path``'s folder the first free name ``names(path.name)`` offers
    (never replacing a file) and return that path; the temporary name is gone afterwards. For files too
    large to hold in memory (saved models), written to ``temporary`` first."""
    try:
        for name in itertools.islice(names(path.name), MAX_CANDIDATES):
            candidate = path.with_name(name)
            try:
                os.link(temporary, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
            try:  # no hard links here: hold the name with an empty file, then move the bytes onto it
                candidate.open("xb").close()
            except FileExistsError:
                continue
            os.replace(temporary, candidate)
            return candidate
    finally:
        temporary.unlink(missing_ok=True)
    raise NoFreeName(f"no free file name like {path.name!r} in {path.parent}: {MAX_CANDIDATES} names are taken; "
                     "move some files away or pick another name")


def next_counter(directory: Path, name: str) -> int:
    """1 + the highest counter of files ``{name}_{counter}_*`` in ``directory`` (1 if none).

    ``%batch_num%`` in ``name`` matches any number, so batches saved with it keep counting.
    """
    if not directory.is_dir():
        return 1
    stem = r"\d+".join(re.escape(part) for part in name.split("%batch_num%"))
    pattern = re.compile(rf"^{stem}_(\d+)_(?:\.|$)")  # the counter right before the ending (not a "_8_steps_")
    highest = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


class FileStore:
    """Writes files into one Loom instance's input/output/temp folders (see the module doc)."""

    def __init__(self, folders: Folders) -> None:
        self.folders = folders

    def path(self, kind: str, filename: str, subfolder: str = "") -> Path:
        """Where a file lives; raises PathOutsideRoot for names that leave the folder."""
        return self.folders.file_path(kind, filename, subfolder)

    def save(self, kind: str, filename: str, data: bytes, *, subfolder: str = "", overwrite: bool = False,
             names: NamePolicy = numbered_names, reuse_same: bool = True) -> str:
        """Write ``data`` under ``filename`` or the next free name; the name used (with the folders
        ``filename`` named, if any).

        ``overwrite`` replaces ``filename`` itself. ``reuse_same=False`` always writes a new file,
        even when one with the same bytes exists (SaveImage: every image gets its own file).
        """
        path = self.path(kind, filename, subfolder)
        if overwrite:
            self.put(kind, filename, data, subfolder=subfolder)
            return filename
        name = save_free(path, data, names=names, reuse_same=reuse_same).name
        directory = filename.replace("\\", "/").rpartition("/")[0]
        return f"{directory}/{name}" if directory else name

    def put(self, kind: str, filename: str, data: bytes, *, subfolder: str = "") -> bool:
        """Make ``filename`` hold ``data``; False when it already did (the file is not touched)."""
        path = self.path(kind, filename, subfolder)
        if same_bytes(path, data):
            return False
        write_atomic(path, data)
        return True
