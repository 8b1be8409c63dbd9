"""Calling a node over lists, as ComfyUI defines it, and merging what the calls return.

Inside a prompt run every output value is a list of items. A node that reads lists runs once per
index (``max`` of the input lengths; a shorter input repeats its last item) unless it declares
``input_is_list``, in which case it runs once and gets the whole lists. Per output, the calls'
results merge: an output declared ``is_list`` concatenates the lists each call returned, any
other output collects one item per call. UI dicts merge by concatenating each key's list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.node import Node, NodeOutput


class NodeContractError(Exception):
    """A node's run() broke the calling contract (wrong result shape)."""


@dataclass(frozen=True)
class CallResult:
    """What one call of ``run`` gave: its output values, UI dict and graph to expand (if any)."""

    values: tuple[Any, ...]
    ui: Mapping[str, Any] | None
    expand: Mapping[str, Any] | None


def call_inputs(cls: type[Node], lists: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The keyword arguments of each call of the node, from its inputs as lists."""
    if cls.input_is_list:
        return [{name: list(items) for name, items in lists.items()}]
    if not lists:
        return [{}]
    count = max(len(items) for items in lists.values())
    if any(len(items) == 0 for items in lists.values()):
        return []  # an empty list maps to no calls, hence empty outputs
    return [{name: items[min(i, len(items) - 1)] for name, items in lists.items()} for i in range(count)]


def split_result(cls: type[Node], result: Any) -> CallResult:
    """Check one call's return value against the node's declared outputs."""
    if isinstance(result, NodeOutput):
        values, ui, expand = tuple(result.values), result.ui, result.expand
    elif isinstance(result, tuple):
        values, ui, expand = result, None, None
    else:
        raise NodeContractError(f"run() returned {type(result).__name__}; it must return a tuple with one "
                                "value per output, or a NodeOutput")
    if len(values) != len(cls.outputs):
        raise NodeContractError(f"run() returned {len(values)} value(s) for {len(cls.outputs)} declared "
                                "output(s)")
    return CallResult(values, ui, expand)


def merge_values(cls: type[Node], per_call: Sequence[Sequence[list[Any]]]) -> tuple[list[Any], ...]:
    """Concatenate, per output, the item lists each call contributed."""
    merged: list[list[Any]] = [[] for _ in cls.outputs]
    for values in per_call:
        for index, items in enumerate(values):
            merged[index].extend(items)
    return tuple(merged)


def as_items(cls: type[Node], values: Sequence[Any]) -> list[list[Any]]:
    """One call's output values as item lists: a list output is already one, others become one item."""
    items: list[list[Any]] = []
    for output, value in zip(cls.outputs, values, strict=True):
        if output.is_list:
            if not isinstance(value, list | tuple):
                raise NodeContractError(f"output {output.label!r} is declared as a list, but run() returned "
                                        f"{type(value).__name__}; return a list")
            items.append(list(value))
        else:
            items.append([value])
    return items


def merge_ui(uis: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Merge the UI dicts of several calls: each key's lists concatenated, in call order."""
    present = [ui for ui in uis if ui is not None]
    if not present:
        return None
    if len(present) == 1:
        return dict(present[0])
    merged: dict[str, Any] = {}
    for ui in present:
        for key, value in ui.items():
            if isinstance(value, list | tuple):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = value
    return merged
