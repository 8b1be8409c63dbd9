"""Pure scheduling state for one prompt: what is ready, what is done, what can be released.

State is plain dicts and sets changed by two small methods, so it is easy to test and to reason
about (dask's ``local.py`` style); the executor is a thin loop around it.

Policy, written down:

* Order. Nodes run in one fixed topological order: the depth-first post-order from the output
  nodes (sorted by id), visiting each node's inputs in declaration order. Among ready nodes the
  one earliest in that order runs first. This finishes one branch before starting the next, so
  intermediate values are released early, and the same prompt always runs in the same order.
* Release. Each value has a count of consumers that still have to run. When it reaches zero the
  value is released from the prompt's working set (the output cache may still hold it). Values
  of requested nodes (``keep``) are never released.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping


class Schedule:
    """``ready()`` / ``done(node)`` over the nodes that run in a prompt.

    ``order``: the nodes that will run, in priority (topological) order.
    ``inputs``: node -> the nodes whose values it reads; those that do not run are ``available``.
    ``add`` and ``wait`` grow the plan while it runs (lazy inputs, node expansion).
    """

    def __init__(
        self,
        order: list[str],
        inputs: Mapping[str, Collection[str]],
        available: Collection[str] = (),
        keep: Collection[str] = (),
    ) -> None:
        self.rank = {node: i for i, node in enumerate(order)}
        self.waiting: dict[str, set[str]] = {}
        self.dependents: dict[str, list[str]] = {}
        self.consumers: dict[str, int] = {}
        self.keep = set(keep)
        self.done_nodes: set[str] = set()
        ready: list[tuple[int, str]] = []
        self._inputs = {node: list(dict.fromkeys(inputs.get(node, ()))) for node in order}
        for node in order:
            sources = self._inputs[node]
            for source in sources:
                self.consumers[source] = self.consumers.get(source, 0) + 1
                self.dependents.setdefault(source, []).append(node)
            pending = {s for s in sources if s not in available}
            self.waiting[node] = pending
            if not pending:
                ready.append((self.rank[node], node))
        heapq.heapify(ready)
        self._ready = ready

    def add(self, node: str, sources: Collection[str], available: Collection[str]) -> None:
        """Add a node to run (a lazily requested input, an expanded node), after all present ones."""
        self.rank[node] = len(self.rank)
        self.done_nodes.discard(node)
        self._inputs[node] = []
        self.wait(node, sources, available)

    def wait(self, node: str, sources: Collection[str], available: Collection[str]) -> None:
        """``node`` (popped, not done) runs again once ``sources`` not ``available`` are done."""
        known = self._inputs[node]
        for source in dict.fromkeys(sources):
            if source not in known:
                known.append(source)
                self.consumers[source] = self.consumers.get(source, 0) + 1
                self.dependents.setdefault(source, []).append(node)
        pending = {s for s in sources if s not in available}
        self.waiting[node] = pending
        if not pending:
            heapq.heappush(self._ready, (self.rank[node], node))

    def has_ready(self) -> bool:
        return bool(self._ready)

    def pop(self) -> str:
        """The next node to run (the ready node earliest in the order)."""
        return heapq.heappop(self._ready)[1]

    def done(self, node: str) -> list[str]:
        """Mark ``node`` finished; returns the values that nobody needs any more."""
        self.done_nodes.add(node)
        for dependent in self.dependents.get(node, ()):
            pending = self.waiting.get(dependent)
            if pending is None:
                continue
            pending.discard(node)
            if not pending and dependent not in self.done_nodes:
                heapq.heappush(self._ready, (self.rank[dependent], dependent))
        released: list[str] = []
        for source in self._inputs.get(node, ()):
            self.consumers[source] -= 1
            if self.consumers[source] == 0 and source not in self.keep:
                released.append(source)
        if self.consumers.get(node, 0) == 0 and node not in self.keep:
            released.append(node)
        return released

    def finished(self) -> bool:
        return len(self.done_nodes) == len(self.rank)


def topological_order(outputs: list[str], inputs_of: Mapping[str, list[str]]) -> list[str]:
    """Depth-first post-order from ``outputs``: every node after the nodes it reads. Iterative."""
    order: list[str] = []
    seen: set[str] = set()
    for root in outputs:
        if root in seen:
            continue
        seen.add(root)
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack[-1]
            sources = inputs_of.get(node, [])
            if i < len(sources):
                stack[-1] = (node, i + 1)
                source = sources[i]
                if source not in seen:
                    seen.add(source)
                    stack.append((source, 0))
            else:
                stack.pop()
                order.append(node)
    return order
