"""Turning a node's failure into the typed error an ``execution_error`` event reports."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

from engine.errors import NodeExecutionError, OutOfMemory
from engine.validate import GraphNode


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (torch.OutOfMemoryError; matched by name, no torch here)."""
    return type(exc).__name__ in ("OutOfMemoryError", "OutOfMemory")


def contract_error(node: GraphNode, message: str) -> NodeExecutionError:
    """The node broke the calling contract (its result's shape, a bad expansion)."""
    return NodeExecutionError(node.id, node.cls.type_name, message, exception_type="loom.NodeContractError",
                              traceback_lines=[])


def node_error(node: GraphNode, exc: BaseException, inputs: Mapping[str, Any]) -> NodeExecutionError:
    """The error of a node whose own code raised ``exc`` while running with ``inputs``."""
    message = str(exc) or type(exc).__name__
    kind = type(exc)
    exception_type = f"{kind.__module__}.{kind.__qualname__}"
    if is_out_of_memory(exc):
        message = (f"node {node.id} ({node.cls.type_name}) ran out of device memory, also when retried after "
                   f"offloading all models and freeing cached outputs ({message.splitlines()[0][:200]}); "
                   "lower the resolution or batch size, or start Loom with --vram low (or --vram none)")
        exception_type = f"{OutOfMemory.__module__}.{OutOfMemory.__qualname__}"
    return NodeExecutionError(
        node.id, node.cls.type_name, message,
        exception_type=exception_type,
        traceback_lines=traceback.format_exception(exc),
        current_inputs={name: [describe(value)] for name, value in inputs.items()})


def describe(value: Any) -> str:
    """A short, safe description of an input value for error reports."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__}(shape={list(shape)}, dtype={getattr(value, 'dtype', '?')})"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
