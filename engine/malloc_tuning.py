"""glibc malloc settings for Loom's own process: freed tensor memory is reused, not handed back and faulted in.

By default glibc serves every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB) with a
fresh ``mmap`` and unmaps it on free, and each thread but the main one allocates from its own arena, whose
heaps are at most 64 MiB. A UNet step or a VAE decode allocates gigabytes of activations that are each used
once: every one of them is a new mapping whose pages the kernel zeroes on first touch (a 512x512 VAE decode
faults in about 10 GiB that way; page faults were a third of its time). :func:`tune_malloc`:

* one arena (``M_ARENA_MAX`` 1): the prompt worker thread allocates from the main heap, which can grow
  without bound, instead of a 64 MiB thread heap that sends every large tensor to ``mmap``;
* ``M_MMAP_THRESHOLD`` at its largest (2 GiB - 1): tensors come from the heap and go back to it;
* ``M_TRIM_THRESHOLD`` at its largest: freed memory at the top of the heap is kept for the next step.

The price is memory the process holds after a peak; :func:`release_free_memory` (``malloc_trim``) gives the
free pages back, and the prompt worker calls it when the queue runs empty. Set before any thread starts
(``main.py`` does, first thing): an arena a thread already has stays its own. Linux with glibc only;
elsewhere both functions do nothing and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["release_free_memory", "tune_malloc"]

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_LARGEST = 2**31 - 1  # mallopt takes an int

_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _LARGEST), (_M_TRIM_THRESHOLD, _LARGEST))


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc() -> bool:
    """Apply the settings above to this process; True when glibc took all of them."""
    libc = _glibc()
    if libc is None:
        log.debug("not glibc: malloc left as it is")
        return False
    accepted = [bool(libc.mallopt(ctypes.c_int(option), ctypes.c_int(value))) for option, value in _SETTINGS]
    if not all(accepted):
        log.warning("glibc refused some malloc settings (%s); large tensors may be allocated with mmap", accepted)
    return all(accepted)


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (``malloc_trim(0)``); True when some were."""
    libc = _glibc()
    return bool(libc.malloc_trim(ctypes.c_size_t(0))) if libc is not None else False
