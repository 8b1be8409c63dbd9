"""Subgraphs (and legacy group nodes) of ComfyUI's editor format, flattened into one level of nodes.

ComfyUI's frontend saves each *subgraph* once, in the workflow's ``definitions.subgraphs``: ``{id (a uuid),
name, inputs, outputs, widgets, inputNode {id: -10}, outputNode {id: -20}, nodes, links}``, with links as
objects ``{id, origin_id, origin_slot, target_id, target_slot, type}``. A node (at the top level or inside
another definition) whose ``type`` is a definition's id is an *instance* of it. Inside the definition:

* a link from the input node (``origin_id`` -10, ``origin_slot`` = the index in the definition's ``inputs``)
  carries what reaches the instance's input of that name: the instance's incoming link, else the value of
  the instance's *promoted widget* for that input, else nothing (the inner node keeps its own widget value);
* a link to the output node (``target_id`` -20, ``target_slot`` = the index in ``outputs``) is what the
  instance's output of that index gives to the nodes linked to it outside.

Promoted widget values are the instance's ``widgets_values``: in the order of ``properties.proxyWidgets``
(``[["-1", input name] | [inner node id, widget name], ...]``, frontends of late 2025) when it is there,
else one value per input whose inner link ends at a widget, in input order (the frontend's own rule);
a ``control_after_generate`` companion value is skipped where the list holds one. An ``[inner node id,
widget name]`` entry sets that inner widget for this instance.

Every node that runs gets the frontend's *execution id*: the ids of the instances on the way from the top,
then its own id, joined by ':' ("74:10"; nested "74:12:3"), so errors, events and history name it as ComfyUI
does. A muted (2) or bypassed (4) instance runs none of its nodes (the frontend's rule since its PR #8494);
a bypassed one passes its inputs through by type, like any bypassed node. Legacy *group nodes*
(:mod:`engine.group_nodes`) are rewritten into a definition of the same shape and expand the same way,
their inner nodes numbered "groupNodeId:index" as ComfyUI's group node code did.

:func:`flatten` returns an editor graph of one level: the nodes that may run, under their execution ids,
with links rewired across the boundaries and literal values fed by PrimitiveNodes, which
:func:`engine.workflow.ui_to_api` converts as it converts any editor workflow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import BadLink, GraphError, MalformedNode, UnknownNode, ValidationFailed
from engine.group_nodes import GroupNodes, group_name
from engine.registry import NodeRegistry

MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
#: The ids of a subgraph definition's input and output nodes in its links.
INPUT_NODE, OUTPUT_NODE = "-10", "-20"
#: Keys :func:`flatten` adds to a node: widget values set from outside (promoted or group widgets), and
#: where the node sits (" inside subgraph 'Name' (node 74)") for messages.
OVERRIDES, CONTEXT = "__loom_widget_values__", "__loom_context__"
#: Subgraphs nested deeper than this, or workflows that expand to more nodes, are refused.
MAX_DEPTH = 64
MAX_NODES = 100_000
#: A link followed through more instance boundaries than this (a chain of pass-through subgraphs) is refused.
MAX_CROSSINGS = 200
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


def whole(value: Any, what: str, where: str) -> int:
    """An id or slot number of the editor format: an int (or its text), else a MalformedNode error."""
    number = _whole_or_none(value)
    if number is None:
        raise ValidationFailed([MalformedNode(None, f"the {what} {str(value)[:40]!r} of {where} is not a "
                                              "whole number; fix or remove it in the workflow")])
    return number


def _whole_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdecimal() and len(value) <= 30:
        return int(value)
    return None


@dataclass(frozen=True)
class Link:
    """One link of an editor graph: where it comes from and (when known) where it goes."""

    origin: str
    origin_slot: int
    target: str | None = None
    target_slot: int | None = None


class LinkTable:
    """The links of one graph level by id. Lists ``[id, origin_id, origin_slot, target_id, target_slot,
    type]`` (schema 0.4) and objects (schema 1, subgraph definitions) alike."""

    def __init__(self, links: Any, where: str = "the workflow") -> None:
        self._by_id: dict[int, Link] = {}
        if not links:
            return
        if not isinstance(links, list):
            raise ValidationFailed([MalformedNode(None, f"the links of {where} must be a list, got "
                                                  f"{type(links).__name__}")])
        for link in links:
            if isinstance(link, list) and len(link) >= 5:
                link_id, origin, slot, target, target_slot = link[0], link[1], link[2], link[3], link[4]
            elif isinstance(link, Mapping):
                link_id, origin, slot = link.get("id"), link.get("origin_id"), link.get("origin_slot")
                target, target_slot = link.get("target_id"), link.get("target_slot")
            else:
                raise ValidationFailed([MalformedNode(None, f"malformed link {link!r:.200} in {where}")])
            place = f"link {link!r:.200}"
            self._by_id[whole(link_id, "link id", place)] = Link(
                str(origin), whole(slot, "origin slot", place), None if target is None else str(target),
                _whole_or_none(target_slot))

    def get(self, link_id: int) -> Link | None:
        return self._by_id.get(link_id)

    def items(self) -> Iterator[tuple[int, Link]]:
        return iter(self._by_id.items())


class Graph:
    """One level of an editor graph: its nodes by id (as text) and its links."""

    def __init__(self, data: Mapping[str, Any], where: str = "the workflow") -> None:
        self.links = LinkTable(data.get("links"), where)
        self._from_input: dict[int, list[tuple[int, Link]]] | None = None
        self.nodes: dict[str, Mapping[str, Any]] = {}
        nodes = data.get("nodes")
        for node in nodes if isinstance(nodes, list) else []:
            if not isinstance(node, Mapping) or "id" not in node or "type" not in node:
                raise ValidationFailed([MalformedNode(None, f"malformed node in {where}: {node!r:.200}")])
            self.nodes[str(node["id"])] = node

    def links_from_input(self, index: int) -> list[tuple[int, Link]]:
        """The links from the definition's input node at ``index`` (the subgraph input of that index)."""
        if self._from_input is None:
            self._from_input = {}
            for link_id, link in self.links.items():
                if link.origin == INPUT_NODE:
                    self._from_input.setdefault(link.origin_slot, []).append((link_id, link))
        return self._from_input.get(index, [])


def slots(value: Any) -> list[Mapping[str, Any]]:
    """A node's ``inputs``: the slot objects of the list (anything else is no slot)."""
    return [slot for slot in value if isinstance(slot, Mapping)] if isinstance(value, list) else []


def node_label(node_id: str, node: Mapping[str, Any], fallback: str | None = None) -> str:
    """``node 74 ('My title')``: the id and the title (or ``fallback``), as messages name a node."""
    title = node.get("title")
    title = title if isinstance(title, str) and title else fallback
    return f"node {node_id}" if not title else f"node {node_id} ({title[:100]!r})"


@dataclass
class _Literal:
    """A value that reaches an input instead of a link (a promoted widget of an instance)."""

    value: Any


_Origin = tuple[str, int] | _Literal
_NO_VALUE: Any = object()


@dataclass
class _Boundary:
    """One input of an instance: its name, its incoming link (in the instance's graph) and promoted value."""

    name: str
    outer_link: int | None
    value: Any = _NO_VALUE


@dataclass
class _Scope:
    """One expanded graph level: the top level, or one instance of a definition."""

    path: tuple[str, ...]
    graph: Graph
    parent: _Scope | None = None
    inputs: list[_Boundary] = field(default_factory=list)
    outputs: dict[int, Link] = field(default_factory=dict)
    #: Widget values set from the instance, by inner node id and widget name.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The definitions on the way down (a definition inside itself would never end).
    chain: tuple[str, ...] = ()
    context: str = ""

    def flat_id(self, local_id: str) -> str:
        return ":".join((*self.path, local_id))


class _Flattener:
    def __init__(self, workflow: Mapping[str, Any], registry: NodeRegistry) -> None:
        self.registry = registry
        self.definitions = _definitions(workflow.get("definitions"))
        extra = workflow.get("extra")
        groups = extra.get("groupNodes") if isinstance(extra, Mapping) else None
        self.groups = GroupNodes(groups if isinstance(groups, Mapping) else {}, registry)
        self.root = _Scope((), Graph(workflow))
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.errors: list[GraphError] = []
        self._graphs: dict[str, Graph] = {}
        self._children: dict[tuple[tuple[str, ...], str], _Scope | None] = {}
        self._resolving: set[tuple[tuple[str, ...], str, int]] = set()
        self._serial = 0

    def flatten(self) -> dict[str, Any]:
        self._emit(self.root)
        return {"nodes": self.nodes, "links": self.links}

    # ------------------------------------------------------------------ nodes

    def _emit(self, scope: _Scope) -> None:
        for local_id, node in scope.graph.nodes.items():
            kind = str(node["type"])
            flat_id = scope.flat_id(local_id)
            inactive = node.get("mode") in (MODE_NEVER, MODE_BYPASS)
            if self._is_container(kind) and not inactive:
                child = self._child(scope, local_id)
                if child is not None:
                    self._emit(child)
                continue
            problem = None if inactive else self._missing_container(kind)
            if problem is not None:
                self.errors.append(UnknownNode(flat_id, f"{node_label(flat_id, node)}{scope.context} {problem}",
                                               class_type=kind, extra_info={"title": node.get("title")}))
                continue
            self._emit_node(scope, local_id, node)

    def _emit_node(self, scope: _Scope, local_id: str, node: Mapping[str, Any]) -> None:
        """A node that is not expanded (an inactive instance too: the converter skips or bypasses it)."""
        if len(self.nodes) >= MAX_NODES:
            raise ValidationFailed([MalformedNode(None, f"the workflow expands to more than {MAX_NODES} nodes; "
                                                  "it cannot be run")])
        flat_id = scope.flat_id(local_id)
        inputs: list[dict[str, Any]] = []
        for slot in slots(node.get("inputs")):
            rewired = dict(slot)
            if slot.get("link") is not None:
                link_id = whole(slot["link"], "input link", f"node {flat_id}")
                rewired["link"] = self._connect(scope, link_id, flat_id, len(inputs), slot)
            inputs.append(rewired)
        outputs = node.get("outputs")
        flat: dict[str, Any] = {**node, "id": flat_id, "inputs": inputs,
                                "outputs": outputs if isinstance(outputs, list) else []}
        if scope.overrides.get(local_id):
            flat[OVERRIDES] = dict(scope.overrides[local_id])
        if scope.context:
            flat[CONTEXT] = scope.context
        self.nodes.append(flat)

    def _connect(self, scope: _Scope, link_id: int, target: str, target_slot: int,
                 slot: Mapping[str, Any]) -> int | None:
        """A link of the flat graph to ``target`` for the local link ``link_id``; None when nothing arrives."""
        origin = self._origin_of_link(scope, link_id)
        if origin is None:
            return None
        if isinstance(origin, _Literal):
            source, source_slot = self._literal(origin.value, slot.get("type")), 0
        else:
            source, source_slot = origin
        self._serial += 1
        self.links.append([self._serial, source, source_slot, target, target_slot, slot.get("type")])
        return self._serial

    def _literal(self, value: Any, kind: Any) -> str:
        """A PrimitiveNode holding ``value``: the converter turns what it feeds into the literal."""
        self._serial += 1
        node_id = f"literal:{self._serial}"
        self.nodes.append({"id": node_id, "type": "PrimitiveNode", "mode": MODE_ALWAYS, "inputs": [],
                           "outputs": [{"name": "value", "type": kind, "links": []}], "widgets_values": [value]})
        return node_id

    # ------------------------------------------------------------------ links

    def _origin_of_link(self, scope: _Scope, link_id: int) -> _Origin | None:
        link = scope.graph.links.get(link_id)
        return None if link is None else self._origin(scope, link.origin, link.origin_slot)

    def _origin(self, scope: _Scope, node_id: str, slot: int) -> _Origin | None:
        """Where output ``slot`` of ``node_id`` really comes from: a node of the flat graph, a literal, or
        nothing. Instances are entered through their output node, definitions left through their input node."""
        key = (scope.path, node_id, slot)
        if key in self._resolving or len(self._resolving) > MAX_CROSSINGS:
            problem = ("form a loop through subgraph inputs and outputs; remove one link of the loop"
                       if key in self._resolving else f"pass through more than {MAX_CROSSINGS} subgraph inputs "
                       "and outputs; connect the nodes more directly")
            where = ":".join(scope.path) if node_id == INPUT_NODE else scope.flat_id(node_id)
            self.errors.append(BadLink(where or None, f"links to node {where} {problem}"))
            return None
        self._resolving.add(key)
        try:
            if node_id == INPUT_NODE and scope.parent is not None:
                if not 0 <= slot < len(scope.inputs):
                    return None
                boundary = scope.inputs[slot]
                if boundary.outer_link is not None:
                    return self._origin_of_link(scope.parent, boundary.outer_link)
                return None if boundary.value is _NO_VALUE else _Literal(boundary.value)
            node = scope.graph.nodes.get(node_id)
            if node is None:
                return None  # a link to a removed node is dropped, as the editor does
            if self._is_container(str(node["type"])) and node.get("mode") not in (MODE_NEVER, MODE_BYPASS):
                child = self._child(scope, node_id)
                inner = child.outputs.get(slot) if child is not None else None
                if child is None or inner is None:
                    return None
                return self._origin(child, inner.origin, inner.origin_slot)
            if node.get("mode") not in (MODE_NEVER, MODE_BYPASS) and self._missing_container(str(node["type"])):
                return None  # reported where the node is
            return (scope.flat_id(node_id), slot)
        finally:
            self._resolving.discard(key)

    # ------------------------------------------------------------------ instances

    def _is_container(self, kind: str) -> bool:
        return kind in self.definitions or self.groups.has(kind)

    def _missing_container(self, kind: str) -> str | None:
        """Why a node of type ``kind`` cannot run as a subgraph or group node instance, if it looks like one."""
        if self.registry.get(kind) is not None or self._is_container(kind):
            return None
        if _UUID.match(kind):
            return (f"is an instance of subgraph {kind!r}, whose definition is missing from the workflow "
                    "(definitions.subgraphs); save the workflow again from the editor that made it, or remove "
                    "the node")
        name = group_name(kind)
        if name is not None:
            return (f"is a group node {kind!r}, whose definition {name!r} is missing from the workflow "
                    "(extra.groupNodes); save the workflow again from the editor that made it, or remove the node")
        return None

    def _child(self, scope: _Scope, local_id: str) -> _Scope | None:
        key = (scope.path, local_id)
        if key not in self._children:
            self._children[key] = self._enter(scope, local_id)
        return self._children[key]

    def _enter(self, scope: _Scope, local_id: str) -> _Scope | None:
        node = scope.graph.nodes[local_id]
        kind = str(node["type"])
        flat_id = scope.flat_id(local_id)
        if kind in self.definitions:
            definition, key = self.definitions[kind], f"subgraph {kind}"
            name = _text(definition.get("name")) or kind
            where, word = f"subgraph {name!r}", "subgraph"
        else:
            definition, node = self.groups.as_subgraph(kind, node)
            key, name = f"group {kind}", group_name(kind) or kind
            where, word = f"group node {name!r}", "group node"
        label = node_label(flat_id, node, name)
        if key in scope.chain:
            self.errors.append(MalformedNode(flat_id, f"{label}{scope.context} is an instance of {where}, which "
                                             "contains itself; remove the instance from its own definition",
                                             class_type=kind))
            return None
        if len(scope.chain) >= MAX_DEPTH:
            self.errors.append(MalformedNode(flat_id, f"{label}{scope.context}: subgraphs nest deeper than "
                                             f"{MAX_DEPTH} levels", class_type=kind))
            return None
        if key not in self._graphs:
            self._graphs[key] = Graph(definition, where)
        graph = self._graphs[key]
        inputs = _boundaries(definition, node, flat_id)
        outputs = _outputs(definition, graph)
        values, overrides = self._widget_values(definition, graph, node)
        for index, value in values.items():
            inputs[index].value = value
        for widget, value in scope.overrides.get(local_id, {}).items():  # set on this instance from outside
            for boundary in inputs:
                if boundary.name == widget and value is not None:
                    boundary.value = value
        return _Scope((*scope.path, local_id), graph, scope, inputs, outputs, overrides, (*scope.chain, key),
                      f" inside {word} {name!r} (node {flat_id})")

    def _widget_values(self, definition: Mapping[str, Any], graph: Graph, node: Mapping[str, Any]
                       ) -> tuple[dict[int, Any], dict[str, dict[str, Any]]]:
        """The instance's promoted widget values: by input index, and by inner node id and widget name."""
        values = node.get("widgets_values")
        if not isinstance(values, list) or not values:
            return {}, {}
        names = [_text(io.get("name")) if isinstance(io, Mapping) else "" for io in _io_list(definition, "inputs")]
        entries = _proxy_widgets(node)
        if entries is None:
            entries = [("-1", name) for index, name in enumerate(names) if self._feeds_widget(graph, index)]
        spare = len(values) - len(entries)  # control_after_generate companions the list may hold
        by_input: dict[int, Any] = {}
        by_node: dict[str, dict[str, Any]] = {}
        position = 0
        for ref, widget in entries:
            if position >= len(values):
                break
            value = values[position]
            position += 1
            if ref == "-1":
                if widget in names and value is not None:
                    by_input[names.index(widget)] = value
            elif value is not None:
                by_node.setdefault(ref, {})[widget] = value
            if spare > 0 and self._has_control(graph, ref, widget, names):
                position += 1
                spare -= 1
        return by_input, by_node

    def _feeds_widget(self, graph: Graph, index: int) -> bool:
        """Whether subgraph input ``index`` is linked to a widget inside (the frontend promotes those)."""
        for link_id, link in graph.links_from_input(index):
            target = graph.nodes.get(link.target or "")
            if target is None:
                continue
            for slot in slots(target.get("inputs")):
                if _whole_or_none(slot.get("link")) != link_id:
                    continue
                if isinstance(slot.get("widget"), Mapping):
                    return True
                cls = self.registry.get(str(target["type"]))
                spec = cls.input_named(str(slot.get("name"))) if cls is not None else None
                if spec is not None and spec.is_widget:
                    return True
        return False

    def _has_control(self, graph: Graph, ref: str, widget: str, names: list[str]) -> bool:
        """Whether the inner widget behind a promoted one has a control_after_generate companion."""
        targets: list[tuple[Mapping[str, Any], str]] = []
        if ref != "-1":
            node = graph.nodes.get(ref)
            targets = [(node, widget)] if node is not None else []
        elif widget in names:
            for link_id, link in graph.links_from_input(names.index(widget)):
                target = graph.nodes.get(link.target or "")
                targets += [(target, str(slot.get("name"))) for slot in slots(target.get("inputs") if target else None)
                            if _whole_or_none(slot.get("link")) == link_id and target is not None]
        for node, name in targets:
            cls = self.registry.get(str(node["type"]))
            spec = cls.input_named(name) if cls is not None else None
            if spec is not None:
                return spec.control_after_generate
        return False


def _definitions(value: Any) -> dict[str, Mapping[str, Any]]:
    """Subgraph definitions by id: ``definitions.subgraphs`` (a list, or a mapping by id), nested ones too."""
    found: dict[str, Mapping[str, Any]] = {}
    stack = [value]
    while stack and len(found) < 10_000:
        current = stack.pop()
        subgraphs = current.get("subgraphs") if isinstance(current, Mapping) else None
        entries = list(subgraphs.values()) if isinstance(subgraphs, Mapping) else subgraphs
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping) and isinstance(entry.get("id"), str) and entry["id"]:
                if entry["id"] not in found:
                    found[entry["id"]] = entry
                    stack.append(entry.get("definitions"))
    return found


def _io_list(definition: Mapping[str, Any], key: str) -> list[Any]:
    value = definition.get(key)
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _boundaries(definition: Mapping[str, Any], node: Mapping[str, Any], flat_id: str) -> list[_Boundary]:
    """The instance's inputs in the definition's order, matched to its saved inputs by name (the saved list
    leaves out unlinked widget inputs, so positions differ), first by name and type, then by name."""
    saved = slots(node.get("inputs"))
    taken: set[int] = set()
    boundaries = []
    for io in _io_list(definition, "inputs"):
        name = _text(io.get("name")) if isinstance(io, Mapping) else ""
        kind = io.get("type") if isinstance(io, Mapping) else None
        match = next((i for i, s in enumerate(saved) if i not in taken and s.get("name") == name
                      and s.get("type") == kind), None)
        if match is None:
            match = next((i for i, s in enumerate(saved) if i not in taken and s.get("name") == name), None)
        outer = None
        if match is not None:
            taken.add(match)
            if saved[match].get("link") is not None:
                outer = whole(saved[match]["link"], "input link", f"node {flat_id}")
        boundaries.append(_Boundary(name, outer))
    return boundaries


def _outputs(definition: Mapping[str, Any], graph: Graph) -> dict[int, Link]:
    """The inner link of each output: the one the definition's output lists, else any link to that slot."""
    found: dict[int, Link] = {}
    for _, link in graph.links.items():
        if link.target == OUTPUT_NODE and link.target_slot is not None:
            found.setdefault(link.target_slot, link)
    for index, io in enumerate(_io_list(definition, "outputs")):
        listed = io.get("linkIds") if isinstance(io, Mapping) else None
        for link_id in listed if isinstance(listed, list) else []:
            number = _whole_or_none(link_id)
            listed_link = graph.links.get(number) if number is not None else None
            if listed_link is not None and listed_link.target == OUTPUT_NODE:
                found[index] = listed_link
                break
    return found


def _proxy_widgets(node: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """``properties.proxyWidgets`` as (node ref, widget name) pairs; "-1" names a subgraph input."""
    properties = node.get("properties")
    value = properties.get("proxyWidgets") if isinstance(properties, Mapping) else None
    if isinstance(value, str):  # the first frontends with it stored it as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list):
        return None
    entries = []
    for entry in value:
        if isinstance(entry, list | tuple) and len(entry) >= 2:
            entries.append((str(entry[0]), str(entry[1])))
        else:
            entries.append(("", ""))  # keeps the positions of the values after it
    return entries


def flatten(workflow: Mapping[str, Any], registry: NodeRegistry) -> tuple[dict[str, Any], list[GraphError]]:
    """The workflow as one level of nodes under execution ids, and the errors found expanding it."""
    flattener = _Flattener(workflow, registry)
    flat = flattener.flatten()
    return flat, flattener.errors
