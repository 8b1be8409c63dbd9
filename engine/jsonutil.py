"""The one compact JSON encoder, and the strict decoder every JSON request body goes through.

Encoder: compact separators (no spaces: bytes per node matter on the websocket), UTF-8 kept as is,
values JSON does not know (paths, enums) written as their ``str``, and never ``NaN``/``Infinity``
(not JSON; a browser's ``JSON.parse`` rejects the whole body): a non-finite float an engine value
carries is written as ``null``, as JavaScript's ``JSON.stringify`` does, and a lone surrogate as U+FFFD.

Decoder: standard JSON only. ``NaN``, ``Infinity``, numbers that overflow a float (``1e400``) and
lone UTF-16 surrogates (``"\\ud800"``, which cannot be encoded as UTF-8 and so could never be
stored or sent back) raise :class:`StrictJsonError` naming where they are.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
#: Numbers that may parse to an infinite float (1e400, 400 digits): the walk then checks the numbers.
_HUGE_EXPONENT = re.compile(r"[eE]\+?\d{3}")
_HUGE_MANTISSA = re.compile(r"\d{309}")
#: A ``\\uD800``-``\\uDFFF`` escape: how a surrogate reaches a string through a strict decode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class StrictJsonError(ValueError):
    """Input that is not strict JSON; ``path`` locates it (``$.prompt.1.class_type``) when known."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message
        self.path = path


def dumps_compact(value: Any, *, default: Callable[[Any], Any] | None = str) -> str:
    """``value`` as compact JSON; ``default=None`` raises TypeError on unknown types instead.

    Non-finite floats become ``null`` and lone surrogates (a file name read with surrogateescape)
    U+FFFD, so the text is always valid JSON that encodes as UTF-8.
    """
    try:
        text = _dumps(value, default)
    except ValueError as exc:
        if "Out of range float values" not in str(exc):
            raise
        text = _dumps(_finite(value), default)
    # JSON's own syntax is ASCII, so a surrogate can only sit inside a string: replacing it in the text is safe.
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _dumps(value: Any, default: Callable[[Any], Any] | None) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=default)


def _finite(value: Any) -> Any:
    """A copy of ``value`` with non-finite floats replaced by None (only called when one exists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def loads_strict(raw: bytes | str) -> Any:
    """Parse standard JSON; StrictJsonError for NaN/Infinity, overflowing numbers or lone surrogates.

    Malformed JSON raises ``json.JSONDecodeError`` and bytes that are not UTF-8/16/32 (surrogates
    encoded as UTF-8 included, which ``json.loads`` would let through) ``UnicodeDecodeError``: both
    ValueErrors.
    """
    text = raw.decode(json.detect_encoding(raw)) if isinstance(raw, bytes) else raw  # strict: no surrogates
    found: list[_NotFinite] = []

    def constant(name: str) -> _NotFinite:
        found.append(_NotFinite(name))
        return found[-1]

    value = json.loads(text, parse_constant=constant)
    # The walk costs more than the parse: only when it can find something.
    if (found or _SURROGATE_ESCAPE.search(text) or _HUGE_EXPONENT.search(text) or _HUGE_MANTISSA.search(text)
            or (not isinstance(raw, bytes) and _SURROGATE.search(text))):
        _check(value)
    return value


class _NotFinite:
    """Stands in for NaN/Infinity while parsing, so the walk can say where it was."""

    def __init__(self, text: str) -> None:
        self.text = text


def _check(value: Any) -> None:
    """Raise StrictJsonError at the first bad number, string or key (iterative: no recursion limit)."""
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _NotFinite):
            raise StrictJsonError(f"{item.text} is not a finite number (JSON has no NaN or Infinity); "
                                  "send a finite number or null", path)
        if isinstance(item, float) and not math.isfinite(item):
            raise StrictJsonError("a number is too large for a float; send a finite number", path)
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise StrictJsonError(_SURROGATE_MESSAGE, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key):
                    raise StrictJsonError(f"a key {_SURROGATE_MESSAGE}", path)
                stack.append((child, f"{path}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(item))


_SURROGATE_MESSAGE = ("holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode; "
                      "send valid UTF-8 text")
