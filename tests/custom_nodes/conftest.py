"""Loading packs puts ComfyUI's module names (``nodes``, ``comfy``, ``server``, ``folder_paths``, ``comfy_api``...)
into ``sys.modules``; after each test module here, what was there before (Loom's own ``nodes`` package among
them) is put back, so tests elsewhere see Loom as it starts."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from engine.custom_nodes.compat import MODULES


@pytest.fixture(scope="module", autouse=True)
def comfy_modules_restored() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in MODULES}
    yield
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
