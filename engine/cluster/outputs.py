"""The front's side of files: input files shipped to workers, output images saved as they come back.

Every worker counts its own ``ComfyUI_00001_.png``, so two workers make the same names. The front saves
each image under the worker's name when that is free (or holds the same bytes), else under the next
free counter, and rewrites the ``executed`` events and history outputs to the names it chose, so /view
and /history work as on one machine.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from engine.cluster.actor import ShippedFile
from engine.cluster.needs import PromptNeeds
from engine.errors import PathOutsideRoot
from engine.files import FileStore, counted_names
from engine.folders import Folders

log = logging.getLogger(__name__)

_MEMO_SIZE = 200_000  # worker file names remembered (about 200 bytes each)


def input_files(folders: Folders, needs: PromptNeeds) -> list[ShippedFile]:
    """The files of the front's input/output/temp folders that a prompt names (missing ones are left for
    the worker's validation to report)."""
    files = []
    for kind, name in sorted(needs.files):
        try:
            path = folders.file_path(kind, name)
        except (PathOutsideRoot, ValueError, OSError):
            continue  # the worker's own validation reports it, naming the node
        if path.is_file():
            files.append(ShippedFile(kind, "", name, path.read_bytes()))
    return files


class OutputStore:
    """Saves workers' output files in the front's folders under names free there; thread-safe."""

    def __init__(self, folders: Folders) -> None:
        self.folders = folders
        self.store = FileStore(folders)
        self._lock = threading.Lock()
        self._names: OrderedDict[tuple[str, str, str, str], str] = OrderedDict()  # (worker, kind, sub, name)

    def save(self, worker_id: str, files: list[ShippedFile]) -> None:
        for shipped in files:
            key = (worker_id, shipped.kind, shipped.subfolder, shipped.filename)
            with self._lock:
                self._names[key] = self._write(shipped)
                self._names.move_to_end(key)
                while len(self._names) > _MEMO_SIZE:
                    self._names.popitem(last=False)

    def rewrite(self, worker_id: str, output: Mapping[str, Any]) -> dict[str, Any]:
        """A node's ``executed`` output with each file entry renamed to what the front saved."""
        renamed: dict[str, Any] = {}
        for field_name, entries in output.items():
            if not isinstance(entries, list):
                renamed[field_name] = entries
                continue
            renamed[field_name] = [self._renamed(worker_id, entry) for entry in entries]
        return renamed

    def rewrite_outputs(self, worker_id: str, outputs: Mapping[str, Any]) -> dict[str, Any]:
        return {node: self.rewrite(worker_id, out) if isinstance(out, Mapping) else out
                for node, out in outputs.items()}

    def _renamed(self, worker_id: str, entry: Any) -> Any:
        if not isinstance(entry, Mapping) or "filename" not in entry:
            return entry
        key = (worker_id, str(entry.get("type", "output")), str(entry.get("subfolder", "")), str(entry["filename"]))
        with self._lock:
            name = self._names.get(key)
        return {**entry, "filename": name} if name else dict(entry)

    def _write(self, shipped: ShippedFile) -> str:
        """Write under the first free name (the worker's own first, then the next counter); the name used."""
        return self.store.save(shipped.kind, shipped.filename, shipped.data, subfolder=shipped.subfolder,
                               names=counted_names)
