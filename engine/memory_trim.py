"""Give freed heap memory back to the operating system (after POST /free).

Freed tensors and cache entries go back to the C allocator, which keeps most of that memory for
reuse: on glibc, blocks above the (adaptive, up to 32 MiB) mmap threshold come from the heap and
arenas, so after the output cache is cleared the process RSS stays at its peak. ``malloc_trim(0)``
returns the free pages of every arena. Other C libraries (musl, macOS, Windows) have no such call;
there this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        log.debug("glibc's malloc_trim is not available; freed memory stays with the allocator")
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def return_free_memory() -> bool:
    """Hand the allocator's free memory back to the OS; True when something was returned (glibc only)."""
    trim = _malloc_trim()
    if trim is None:
        log.debug("no malloc_trim on this platform; nothing to give back")
        return False
    released = bool(trim(0))
    log.debug("malloc_trim(0): %s", "memory returned to the OS" if released else "nothing to return")
    return released
