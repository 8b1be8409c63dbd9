"""Primitive nodes (ComfyUI's comfy_extras/nodes_primitive): one widget whose value is the output,
so a string, number or switch can feed several nodes; and PreviewAny (comfy_extras/nodes_preview_any),
which shows any value as text in the UI.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from engine.sdk import ANY, BOOLEAN, FLOAT, INT, STRING, Input, Node, NodeOutput, Output, RunContext

log = logging.getLogger(__name__)

_MODULE = "comfy_extras.nodes_primitive"
_CATEGORY = "utils/primitive"

#: ComfyUI bounds PrimitiveInt and PrimitiveFloat by +-sys.maxsize (2**63 - 1 on 64-bit Python).
PRIMITIVE_LIMIT = sys.maxsize


class PrimitiveString(Node):
    """A single-line string."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "String"
    inputs = (Input("value", STRING),)
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, value: str) -> tuple[str]:
        return (value,)


class PrimitiveStringMultiline(Node):
    """A multi-line string."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "String (Multiline)"
    inputs = (Input("value", STRING, multiline=True),)
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, value: str) -> tuple[str]:
        return (value,)


class PrimitiveInt(Node):
    """A whole number; the editor may change it after each run (fixed, increment, decrement, randomize)."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Int"
    inputs = (Input("value", INT, min=-PRIMITIVE_LIMIT, max=PRIMITIVE_LIMIT, control_after_generate=True),)
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, value: int) -> tuple[int]:
        return (value,)


class PrimitiveFloat(Node):
    """A number."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Float"
    inputs = (Input("value", FLOAT, min=-PRIMITIVE_LIMIT, max=PRIMITIVE_LIMIT, step=0.1),)
    outputs = (Output(FLOAT),)

    def run(self, ctx: RunContext, value: float) -> tuple[float]:
        return (value,)


class PrimitiveBoolean(Node):
    """A switch: true or false."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Boolean"
    inputs = (Input("value", BOOLEAN),)
    outputs = (Output(BOOLEAN),)

    def run(self, ctx: RunContext, value: bool) -> tuple[bool]:
        return (value,)


#: What PreviewAny shows when even ``str()`` of the value fails.
UNPRINTABLE = "source exists, but could not be serialized."


def preview_text(source: Any) -> str:
    """PreviewAny's text, as ComfyUI writes it.

    Text as it is; None as ``None``; numbers and booleans with ``str``; anything JSON can write
    (dicts, lists) as JSON indented by 4 (ASCII-escaped, like ``json.dumps``); anything else
    (tensors, a LATENT dict, model handles) with ``str``.

    One difference: ComfyUI prints tensors with torch's ``edgeitems=6`` (six items each side of the
    ``...`` of a large tensor); Loom leaves torch's print options alone (a process-wide setting that
    other threads share), so large tensors show torch's default three.
    """
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, int | float):  # bool is an int
        return str(source)
    try:
        return json.dumps(source, indent=4)
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return str(source)
    except Exception:  # noqa: BLE001 - any failing __str__/__repr__ of a foreign value is shown, not raised
        log.warning("PreviewAny: could not turn a %s into text", type(source).__name__, exc_info=True)
        return UNPRINTABLE


class PreviewAny(Node):
    """Show any value as text in the UI (and pass that text on)."""

    python_module = "comfy_extras.nodes_preview_any"
    category = "utilities"
    display_name = "Preview as Text"
    output_node = True
    inputs = (Input("source", ANY),)
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, source: Any) -> NodeOutput:
        text = preview_text(source)
        return NodeOutput((text,), ui={"text": [text]})


PRIMITIVE_NODES: tuple[type[Node], ...] = (
    PrimitiveString, PrimitiveStringMultiline, PrimitiveInt, PrimitiveFloat, PrimitiveBoolean, PreviewAny)
