"""Node expansion: a node returns a graph fragment to run in its place.

A node builds the fragment with :class:`GraphBuilder` (``ctx.graph_builder()`` gives one with
ComfyUI's id scheme: ``"{parent_id}.{call_index}.{graph_index}.{n}"``) and returns
``NodeOutput(values, expand=builder.finalize())``, where ``values`` may hold links ``[node_id,
index]`` into the fragment (or into the outer prompt). The executor validates the fragment like a
prompt, runs what the values need (through the output cache, so a re-run reuses unchanged parts)
and then gives the parent node's outputs the values they link to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def expansion_prefix(parent_id: str, call_index: int, graph_index: int) -> str:
    """The id prefix of the nodes one expansion adds (ComfyUI's scheme)."""
    return f"{parent_id}.{call_index}.{graph_index}."


@dataclass
class BuiltNode:
    """One node of a fragment under construction."""

    id: str
    class_type: str
    inputs: dict[str, Any] = field(default_factory=dict)

    def out(self, index: int) -> list[Any]:
        """A link to this node's output ``index``, for another node's input or the parent's values."""
        return [self.id, index]

    def set_input(self, name: str, value: Any) -> None:
        self.inputs[name] = value.out(0) if isinstance(value, BuiltNode) else value


class GraphBuilder:
    """Builds an API-format fragment whose node ids all start with ``prefix``."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.nodes: dict[str, BuiltNode] = {}
        self._next = 1

    def node(self, class_type: str, id: str | None = None, **inputs: Any) -> BuiltNode:
        """Add a node (or return the one with this id); inputs are literals or ``other.out(i)``."""
        if id is None:
            id = str(self._next)
            self._next += 1
        full_id = self.prefix + id
        existing = self.nodes.get(full_id)
        if existing is not None:
            return existing
        built = BuiltNode(full_id, class_type, dict(inputs))
        self.nodes[full_id] = built
        return built

    def lookup(self, id: str) -> BuiltNode | None:
        return self.nodes.get(self.prefix + id)

    def finalize(self) -> dict[str, dict[str, Any]]:
        """The fragment in API format."""
        return {nid: {"class_type": n.class_type, "inputs": dict(n.inputs)} for nid, n in self.nodes.items()}

