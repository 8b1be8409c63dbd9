"""The one compact JSON encoder: websocket frames, HTTP bodies and stored queue rows use it.

Compact separators (no spaces: bytes per node matter on the websocket), UTF-8 kept as is, and
values JSON does not know (paths, enums) written as their ``str``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def dumps_compact(value: Any, *, default: Callable[[Any], Any] | None = str) -> str:
    """``value`` as compact JSON; ``default=None`` raises TypeError on unknown types instead."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=default)
