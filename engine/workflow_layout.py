"""API format -> editor format: an API prompt laid out as a litegraph workflow the editor can open.

The reverse of :func:`engine.workflow.ui_to_api`. Nodes go in one column per depth in the graph
(longest path from a source), stacked in each column with heights from their sockets and widgets, so
links run left to right. Widget values come from the prompt's literal inputs (the node's default when
one is missing); a widget input fed by a link becomes an input socket with a ``widget`` entry, as the
editor writes it. Used by the editor to open API-format files and PNGs and by
tools/make_example_workflows.py to write the shipped workflows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import GraphError, UnknownNode, ValidationFailed
from engine.node import Input, Node
from engine.registry import NodeRegistry
from engine.workflow import is_link, parse_api_prompt

COLUMN_WIDTH, NODE_WIDTH, ROW_HEIGHT, PREVIEW_HEIGHT = 340, 310, 24, 180
CONTROL_DEFAULT = "fixed"
UPLOAD_WIDGET_VALUE = "image"  # ComfyUI's upload button after an image combo keeps this value


def api_to_ui(prompt: Mapping[str, Any], registry: NodeRegistry) -> dict[str, Any]:
    """The editor workflow (litegraph schema 0.4) of an API-format prompt; raises ValidationFailed."""
    nodes = parse_api_prompt(prompt)
    classes = _classes(nodes, registry)
    ids = _numeric_ids(nodes)
    sources = {node_id: [str(v[0]) for v in node["inputs"].values() if is_link(v) and str(v[0]) in nodes]
               for node_id, node in nodes.items()}
    places = _layout(list(nodes), sources, classes)
    links: list[list[Any]] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    entries: list[dict[str, Any]] = []
    for order, (node_id, node) in enumerate(nodes.items()):
        cls = classes[node_id]
        inputs: list[dict[str, Any]] = []
        for spec in _slot_inputs(cls, node["inputs"]):
            value = node["inputs"].get(spec.name)
            link_id = None
            if is_link(value) and str(value[0]) in nodes and 0 <= value[1] < len(classes[str(value[0])].outputs):
                source, slot = str(value[0]), value[1]
                link_id = len(links) + 1
                links.append([link_id, ids[source], slot, ids[node_id], len(inputs),
                              classes[source].outputs[slot].type])
                out_links.setdefault((source, slot), []).append(link_id)
            slot_entry: dict[str, Any] = {"name": spec.name, "type": spec.type, "link": link_id}
            if spec.is_widget:
                slot_entry["widget"] = {"name": spec.name}
            inputs.append(slot_entry)
        position, size = places[node_id]
        entry: dict[str, Any] = {"id": ids[node_id], "type": cls.type_name, "pos": position, "size": size,
                                 "flags": {}, "order": order, "mode": 0, "inputs": inputs}
        title = (node.get("_meta") or {}).get("title")
        if title and title not in (cls.display_name, cls.type_name):
            entry["title"] = str(title)
        if cls.widget_inputs():
            entry["widgets_values"] = _widget_values(cls, node["inputs"])
        entries.append(entry)
    for entry, node_id in zip(entries, nodes, strict=True):
        entry["outputs"] = [{"name": out.name or out.type, "type": out.type, "slot_index": slot,
                             "links": out_links.get((node_id, slot), [])}
                            for slot, out in enumerate(classes[node_id].outputs)]
    return {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": entries, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


def _classes(nodes: Mapping[str, Mapping[str, Any]], registry: NodeRegistry) -> dict[str, type[Node]]:
    classes: dict[str, type[Node]] = {}
    errors: list[GraphError] = []
    for node_id, node in nodes.items():
        cls = registry.get(node["class_type"])
        if cls is None:
            errors.append(UnknownNode(node_id, f"node {node_id} has unknown type {node['class_type']!r}; "
                                      "install the node or remove it from the workflow",
                                      class_type=node["class_type"]))
        else:
            classes[node_id] = cls
    if errors:
        raise ValidationFailed(errors)
    return classes


def _numeric_ids(nodes: Mapping[str, Any]) -> dict[str, int]:
    """The prompt's ids where they are all positive integers (as ComfyUI writes them), else 1, 2, ..."""
    if all(node_id.isdecimal() and int(node_id) > 0 for node_id in nodes):
        return {node_id: int(node_id) for node_id in nodes}
    return {node_id: index for index, node_id in enumerate(nodes, start=1)}


def _slot_inputs(cls: type[Node], inputs: Mapping[str, Any]) -> list[Input]:
    """Input sockets: every socket-only input, and widget inputs that the prompt feeds by a link."""
    sockets = [spec for spec in cls.inputs if not spec.is_widget]
    linked_widgets = [spec for spec in cls.widget_inputs() if is_link(inputs.get(spec.name))]
    return sockets + linked_widgets


def _widget_values(cls: type[Node], inputs: Mapping[str, Any]) -> list[Any]:
    values: list[Any] = []
    for spec in cls.widget_inputs():
        value = inputs.get(spec.name, spec.default)
        if is_link(value):
            value = spec.default
        if isinstance(value, Mapping) and "__value__" in value:
            value = value["__value__"]
        values.append(value)
        if spec.control_after_generate:
            values.append(CONTROL_DEFAULT)
        if spec.image_upload:
            values.append(UPLOAD_WIDGET_VALUE)
    return values


def _layout(order: list[str], sources: Mapping[str, list[str]],
            classes: Mapping[str, type[Node]]) -> dict[str, tuple[list[int], list[int]]]:
    """Node id -> (position, size), one column per depth; a cycle (invalid anyway) is cut where found."""
    depth: dict[str, int] = {}
    for start in order:
        if start in depth:
            continue
        stack, visiting = [start], {start}
        while stack:
            node_id = stack[-1]
            pending = [s for s in sources[node_id] if s not in depth and s not in visiting]
            if pending:
                stack.append(pending[0])
                visiting.add(pending[0])
                continue
            depth[node_id] = 1 + max((depth.get(s, -1) for s in sources[node_id]), default=-1)
            visiting.discard(stack.pop())
    placed: dict[str, tuple[list[int], list[int]]] = {}
    column_y: dict[int, int] = {}
    for node_id in order:
        cls = classes[node_id]
        widgets = len(cls.widget_inputs())
        rows = max(len(cls.outputs), len(cls.inputs) - widgets) + widgets
        height = 40 + ROW_HEIGHT * rows + (PREVIEW_HEIGHT if cls.output_node else 0)
        column = depth[node_id]
        y = column_y.get(column, 60)
        placed[node_id] = ([40 + COLUMN_WIDTH * column, y], [NODE_WIDTH, height])
        column_y[column] = y + height + 50
    return placed
