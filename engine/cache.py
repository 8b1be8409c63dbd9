"""Cache keys and the output cache.

A node's cache key is a sha256 Merkle hash over what determines its outputs: class name, class
version, its literal inputs (canonical JSON), the keys of the nodes it reads (with output index)
and, for impure nodes, a fingerprint of the files they read. Node ids are not part of it, so
identical subgraphs share entries, inside one prompt and across prompts. Computing a key is O(1)
in the size of the graph: it hashes fixed-size upstream keys, never whole ancestries.

The output cache is an LRU bounded both in bytes and in entries. It lives across prompts. Values
are the node's outputs (tensors, small handles) and its UI dict; models are never in it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any


def cache_key(
    class_type: str,
    version: str,
    literals: Mapping[str, Any],
    links: Mapping[str, tuple[str, int]],
    fingerprint: str | None = None,
) -> str:
    """The Merkle key of one node. ``links`` maps input name -> (upstream cache key, output index)."""
    material = {
        "class": class_type,
        "version": version,
        "literals": literals,
        "links": {name: [key, index] for name, (key, index) in links.items()},
        "fingerprint": fingerprint,
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def estimate_nbytes(value: Any, _depth: int = 0) -> int:
    """Bytes a cached value holds: tensors and arrays by ``nbytes``, containers summed, else small."""
    if _depth > 8:
        return 64
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, Mapping):
        return 64 + sum(estimate_nbytes(v, _depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return 64 + sum(estimate_nbytes(v, _depth + 1) for v in value)
    if isinstance(value, str | bytes):
        return 64 + len(value)
    return 64


@dataclass(frozen=True)
class CacheEntry:
    """The outputs of one node run, its UI dict (output nodes) and their estimated size."""

    values: tuple[Any, ...]
    ui: Mapping[str, Any] | None
    nbytes: int


class OutputCache:
    """Thread-safe LRU of node outputs keyed by cache key, bounded by bytes and entries."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: str, values: tuple[Any, ...], ui: Mapping[str, Any] | None) -> bool:
        """Store an entry, evicting least-recently-used ones; False if it alone exceeds the budget."""
        entry = CacheEntry(values, ui, estimate_nbytes(values) + estimate_nbytes(ui))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            if entry.nbytes > self.max_bytes or self.max_entries == 0:
                return False
            self._entries[key] = entry
            self._nbytes += entry.nbytes
            while self._entries and (self._nbytes > self.max_bytes or len(self._entries) > self.max_entries):
                _, evicted = self._entries.popitem(last=False)
                self._nbytes -= evicted.nbytes
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def retain(self, keys: Collection[str]) -> int:
        """Drop every entry whose key is not in ``keys`` (e.g. to free memory); returns how many went."""
        with self._lock:
            dropped = [key for key in self._entries if key not in keys]
            for key in dropped:
                self._nbytes -= self._entries.pop(key).nbytes
            return len(dropped)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)
