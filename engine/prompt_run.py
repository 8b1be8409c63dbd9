"""One prompt while it runs: plan, run node by node, grow the plan for lazy inputs and expansions.

The plan starts from the output nodes and walks back through their (non-lazy) inputs, stopping at
values the output cache holds. Nodes run in the deterministic order of engine/schedule.py. Two
things grow the plan while it runs, both through :meth:`PromptRun._require` (which reuses cached
values exactly like the first plan):

* a node with lazy inputs is asked which it needs; those are computed and the node asked again;
* a node that expands returns a graph fragment; its nodes are validated, keyed (the same O(1)
  Merkle keys), run where not cached, and the node's outputs become the values it linked to.

Every value is a list of items inside a run (engine/node_call.py); the output cache stores the same.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.cache import cache_key
from engine.context import RunContext
from engine.errors import Interrupted, NodeExecutionError, ValidationFailed
from engine.events import Executed, Executing, ExecutionCached, ExecutionSuccess
from engine.fragments import result_links, validate_fragment
from engine.node import Node
from engine.node_call import (
    CallResult,
    NodeContractError,
    as_items,
    call_inputs,
    merge_ui,
    merge_values,
    split_result,
)
from engine.node_errors import contract_error, is_out_of_memory, node_error
from engine.schedule import Schedule, topological_order
from engine.validate import GraphNode, ValidatedPrompt, node_sort_key
from engine.workflow import is_link, parse_api_prompt

if TYPE_CHECKING:
    from engine.executor import ExecutionOutcome, Executor, RecordingSink

log = logging.getLogger(__name__)

Values = tuple[list[Any], ...]


class PromptRun:
    """The state of one prompt while it runs. Created per prompt, thrown away after."""

    def __init__(self, executor: Executor, validated: ValidatedPrompt, prompt: Mapping[str, Any], prompt_id: str,
                 sink: RecordingSink, extra_data: Mapping[str, Any], interrupt: threading.Event,
                 outcome: ExecutionOutcome) -> None:
        self.executor = executor
        self.nodes: dict[str, GraphNode] = dict(validated.nodes)
        self.outputs = sorted(validated.outputs, key=node_sort_key)
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.sink = sink
        self.extra_data = extra_data
        self.interrupt = interrupt
        self.outcome = outcome
        self.keys: dict[str, str] = {}
        self.canonical: dict[str, str] = {}
        self.by_key: dict[str, str] = {}
        self.position: dict[str, int] = {}
        self.values: dict[str, Values] = {}
        self.display: dict[str, str] = {}  # expanded node -> the id the UI shows (its outermost parent)
        self.parent: dict[str, str] = {}
        self.expanding: dict[str, list[CallResult]] = {}
        self.announced: set[str] = set()
        self.scheduled: set[str] = set()
        self.schedule = Schedule([], {})
        self._raw: dict[str, dict[str, Any]] | None = None
        self.current: str | None = None  # the node running now, for interrupt and error reports

    def execute(self) -> None:
        """Run the prompt; raises Interrupted or NodeExecutionError (``current`` names the node)."""
        inputs_of = {nid: [src for src, _ in node.links.values()] for nid, node in self.nodes.items()}
        order = topological_order(self.outputs, inputs_of)
        self._compute_keys(order)
        cache = self.executor.cache
        cached = [nid for nid in order if self.keys[nid] in cache]
        self.outcome.cached = cached
        self.sink.emit(ExecutionCached(nodes=cached, prompt_id=self.prompt_id))
        self._require(self.outputs)
        while self.schedule.has_ready():
            self.current = self.schedule.pop()
            if self._step(self.current):
                self.scheduled.discard(self.current)
                for released in self.schedule.done(self.current):
                    self.values.pop(released, None)
        self._emit_duplicate_outputs()
        self.sink.emit(ExecutionSuccess(prompt_id=self.prompt_id))

    # ------------------------------------------------------------------ keys and planning

    def _compute_keys(self, order: list[str]) -> None:
        for node_id in order:
            node = self.nodes[node_id]
            fingerprint = self._fingerprint(node)
            links = {name: (self.keys[src], index) for name, (src, index) in node.links.items()}
            key = cache_key(node.cls.type_name, node.cls.version, node.literals, links, fingerprint)
            self.keys[node_id] = key
            self.canonical[node_id] = self.by_key.setdefault(key, node_id)
            self.position[node_id] = len(self.position)

    def _fingerprint(self, node: GraphNode) -> str | None:
        if node.cls.always_run:
            return uuid.uuid4().hex
        try:
            return node.cls.fingerprint(self.executor.folders, node.literals)
        except Exception as exc:  # noqa: BLE001 - any failure of a node's own code becomes its error
            raise node_error(node, exc, {}) from exc

    def _eager_sources(self, node_id: str) -> list[str]:
        node = self.nodes[node_id]
        return [self.canonical[src] for name, (src, _) in node.links.items() if not _is_lazy(node.cls, name)]

    def _require(self, node_ids: list[str]) -> list[str]:
        """Make sure each node's value will exist: present, from the cache, or scheduled to run.

        Returns their canonical ids (what a waiting node waits on)."""
        wanted = [self.canonical[n] for n in node_ids]
        to_run: set[str] = set()
        stack, seen = list(wanted), set()
        while stack:
            node_id = stack.pop()
            if node_id in seen or node_id in self.values or node_id in self.scheduled:
                continue
            seen.add(node_id)
            entry = self.executor.cache.get(self.keys[node_id])
            if entry is not None:
                self.values[node_id] = entry.values
                self._show_output(node_id, entry.ui)
                continue
            to_run.add(node_id)
            stack.extend(self._eager_sources(node_id))
        for node_id in sorted(to_run, key=self.position.__getitem__):
            self.schedule.add(node_id, self._eager_sources(node_id), self.values)
            self.scheduled.add(node_id)
        return wanted

    # ------------------------------------------------------------------ running one node

    def _step(self, node_id: str) -> bool:
        """Run (or continue) one node; False when it waits for more values first."""
        if self.interrupt.is_set():
            raise Interrupted(f"interrupted before node {node_id}")
        node = self.nodes[node_id]
        if node_id in self.expanding:
            self._finish_expansion(node)
            return True
        if node_id not in self.announced:
            self.announced.add(node_id)
            self.sink.emit(Executing(node=node_id, display_node=self.display.get(node_id, node_id),
                                     prompt_id=self.prompt_id))
        calls = call_inputs(node.cls, self._input_lists(node))
        instance = node.cls()
        needed = self._lazy_needs(node, instance, calls)
        if needed:
            self.schedule.wait(node_id, self._require(needed), self.values)
            return False
        results = [self._call(node, instance, index, kwargs) for index, kwargs in enumerate(calls)]
        if any(result.expand for result in results):
            return self._expand(node, results)
        try:
            values = merge_values(node.cls, [as_items(node.cls, r.values) for r in results])
        except NodeContractError as exc:
            raise contract_error(node, str(exc)) from exc
        self._store(node_id, values, merge_ui([r.ui for r in results]))
        return True

    def _input_lists(self, node: GraphNode) -> dict[str, list[Any]]:
        lists: dict[str, list[Any]] = {name: [value] for name, value in node.literals.items()}
        for name, (src, index) in node.links.items():
            value = self.values.get(self.canonical[src])
            lists[name] = [None] if value is None else value[index]  # None: a lazy input not computed
        return lists

    def _context(self, node: GraphNode, call_index: int) -> RunContext:
        return RunContext(
            node_id=node.id, prompt_id=self.prompt_id, folders=self.executor.folders, sink=self.sink,
            interrupt=self.interrupt, prompt=self.prompt,
            extra_pnginfo=self.extra_data.get("extra_pnginfo") or {}, models=self.executor.models,
            previews=self.executor.previews, preview_method=self.executor.preview_method,
            log=logging.getLogger(f"loom.node.{node.cls.type_name}"), call_index=call_index,
            client_id=_client_id(self.extra_data))

    def _lazy_needs(self, node: GraphNode, instance: Node, calls: list[dict[str, Any]]) -> list[str]:
        """The sources of lazy inputs the node asks for that are not computed yet."""
        missing = {name: src for name, (src, _) in node.links.items()
                   if _is_lazy(node.cls, name) and self.canonical[src] not in self.values}
        if not missing:
            return []
        asked: set[str] = set()
        for index, kwargs in enumerate(calls):
            try:
                asked.update(instance.check_lazy_status(self._context(node, index), **kwargs))
            except Interrupted:
                raise
            except Exception as exc:  # noqa: BLE001 - the node's own code failed
                raise node_error(node, exc, kwargs) from exc
        return [missing[name] for name in sorted(asked) if name in missing]

    def _call(self, node: GraphNode, instance: Node, index: int, kwargs: dict[str, Any]) -> CallResult:
        try:
            result = self._run_with_oom_retry(node, instance, self._context(node, index), kwargs)
            return split_result(node.cls, result)
        except (Interrupted, NodeExecutionError):
            raise
        except NodeContractError as exc:
            raise contract_error(node, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - any failure of a node's own code becomes its error
            raise node_error(node, exc, kwargs) from exc

    def _run_with_oom_retry(self, node: GraphNode, instance: Node, ctx: RunContext, kwargs: dict[str, Any]) -> Any:
        """Run the node; after a device out-of-memory error free memory and run it once more."""
        try:
            return instance.run(ctx, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled here; the rest re-raised as is
            if not is_out_of_memory(exc):
                raise
            log.warning("node %s (%s) ran out of device memory; freeing memory and retrying once",
                        node.id, node.cls.type_name)
        self._free_memory()  # outside the except block: the failed call's frames (and tensors) are gone
        return instance.run(ctx, **kwargs)

    def _free_memory(self) -> None:
        """Offload models (stepping down a VRAM mode where the manager can) and drop cached outputs
        this prompt does not use."""
        log.warning("out of memory: %s", self.executor.models.recover_from_oom())
        dropped = self.executor.cache.retain(set(self.keys.values()))
        log.info("out of memory: dropped %d cached outputs", dropped)

    def _store(self, node_id: str, values: Values, ui: Mapping[str, Any] | None) -> None:
        self.values[node_id] = values
        self.outcome.executed.append(node_id)
        self.executor.cache.put(self.keys[node_id], values, ui)
        self._show_output(node_id, ui)

    # ------------------------------------------------------------------ expansion

    def _expand(self, node: GraphNode, results: list[CallResult]) -> bool:
        fragment: dict[str, Any] = {}
        for result in results:
            fragment.update(result.expand or {})
        if self._raw is None:
            self._raw = parse_api_prompt(self.prompt)
        try:
            added = validate_fragment(fragment, self._raw, self.nodes, self.executor.registry,
                                      self.executor.folders)
        except ValidationFailed as exc:
            message = "; ".join(e.message for e in exc.errors)
            raise contract_error(node, f"the graph it expanded into is invalid: {message}") from exc
        self._raw.update(parse_api_prompt(fragment) if fragment else {})
        self.nodes.update(added)
        inner_inputs = {nid: [src for src, _ in n.links.values() if src in added] for nid, n in added.items()}
        order = topological_order(sorted(added, key=node_sort_key), inner_inputs)
        self._compute_keys(order)
        for node_id in order:
            self.parent[node_id] = node.id
            self.display[node_id] = self.display.get(node.id, node.id)
        targets = self._result_targets(node, results)
        targets += [nid for nid in order if added[nid].cls.output_node]
        self.expanding[node.id] = results
        self.schedule.wait(node.id, self._require(targets), self.values)
        return False

    def _result_targets(self, node: GraphNode, results: list[CallResult]) -> list[str]:
        targets: list[str] = []
        for result in results:
            for source, index in result_links(result.values):
                target = self.nodes.get(source)
                if target is None or not 0 <= index < len(target.cls.outputs):
                    raise contract_error(
                        node, f"run() returned a link to output {index} of node {source}, which the expanded "
                        "graph does not have; link to a node of the returned graph")
                targets.append(source)
        return targets

    def _finish_expansion(self, node: GraphNode) -> None:
        """The expanded graph ran: the node's outputs are the values its results link to."""
        results = self.expanding.pop(node.id)
        per_call: list[list[list[Any]]] = []
        for result in results:
            items: list[list[Any]] = []
            for output, value in zip(node.cls.outputs, result.values, strict=True):
                if is_link(value):
                    items.append(list(self.values[self.canonical[value[0]]][value[1]]))
                else:
                    items.append(list(value) if output.is_list else [value])
            per_call.append(items)
        self._store(node.id, merge_values(node.cls, per_call), merge_ui([r.ui for r in results]))

    # ------------------------------------------------------------------ what the UI sees

    def _show_output(self, node_id: str, ui: Mapping[str, Any] | None) -> None:
        if ui is None or not self.nodes[node_id].cls.output_node:
            return
        display = self.display.get(node_id, node_id)
        self.outcome.outputs[node_id] = dict(ui)
        self.outcome.meta[node_id] = {"node_id": node_id, "display_node": display,
                                      "parent_node": self.parent.get(node_id), "real_node_id": node_id}
        self.sink.emit(Executed(node=node_id, display_node=display, output=dict(ui), prompt_id=self.prompt_id))

    def _emit_duplicate_outputs(self) -> None:
        """Output nodes identical to another one in this prompt show the same result."""
        for out in self.outputs:
            first = self.canonical[out]
            if first != out and first in self.outcome.outputs:
                self._show_output(out, self.outcome.outputs[first])


def _is_lazy(cls: type[Node], name: str) -> bool:
    spec = cls.input_named(name)
    return spec is not None and spec.lazy


def _client_id(extra_data: Mapping[str, Any]) -> str | None:
    client_id = extra_data.get("client_id")
    return client_id if isinstance(client_id, str) else None
