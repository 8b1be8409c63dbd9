"""The small caches of model add-ons that live outside the ModelManager's residency accounting.

Upscale models, CLIP vision towers, style models, PhotoMaker encoders, hypernetworks and GLIGEN files
are each kept in a bounded per-module cache keyed by the file's path, size and mtime (see their
modules). :func:`clear_addon_caches` empties all of them; the ModelManager calls it from
``unload_all`` (POST /free with unload_models), so a free really frees them.
"""

from __future__ import annotations

import importlib
import logging
import sys

log = logging.getLogger(__name__)

#: (module, cached function) pairs; the modules are imported only if something already loaded them.
_CACHED = (
    ("engine.models.upscale", "_load"),
    ("engine.models.clip_vision", "load_clip_vision"),
    ("engine.models.clip_vision", "load_style_model"),
    ("engine.models.photomaker", "load_photomaker"),
    ("engine.models.hypernetwork", "read_hypernetwork"),
    ("engine.models.gligen", "read_gligen"),
)


def clear_addon_caches() -> int:
    """Empty every add-on cache of a module already imported; returns how many entries were dropped."""
    dropped = 0
    for module_name, function_name in _CACHED:
        if module_name not in sys.modules:  # never loaded: nothing cached, and no reason to import it
            continue
        cached = getattr(importlib.import_module(module_name), function_name)
        dropped += cached.cache_info().currsize
        cached.cache_clear()
    if dropped:
        log.info("dropped %d cached model add-on(s)", dropped)
    return dropped
