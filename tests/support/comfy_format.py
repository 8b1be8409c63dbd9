"""Builders of editor workflows in the shapes ComfyUI's frontend saves (tests write them, no fixtures on disk).

Top level: schema 0.4, links as ``[id, origin_id, origin_slot, target_id, target_slot, type]``. Subgraph
definitions (``definitions.subgraphs``): schema 1, links as objects, the input node -10 and the output node -20,
``inputs``/``outputs`` as SubgraphIO objects with ``linkIds`` -- the shape of ComfyUI's workflow templates
(e.g. Comfy-Org/workflow_templates templates/01_qwen_t2i_subgraphed.json, frontend 1.32).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20


def node(node_id: int, kind: str, *, inputs: Sequence[dict[str, Any]] = (), outputs: Sequence[dict[str, Any]] = (),
         widgets: Any = None, mode: int = 0, title: str | None = None,
         properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """A node as the editor saves it (``widgets_values`` left out when ``widgets`` is None)."""
    saved: dict[str, Any] = {"id": node_id, "type": kind, "pos": [0, 0], "size": [240, 120], "flags": {},
                             "order": 0, "mode": mode, "inputs": list(inputs), "outputs": list(outputs),
                             "properties": {"Node name for S&R": kind, **(properties or {})}}
    if title is not None:
        saved["title"] = title
    if widgets is not None:
        saved["widgets_values"] = widgets
    return saved


def inp(name: str, kind: str, link: int | None = None, *, widget: bool = False) -> dict[str, Any]:
    """An input slot; ``widget`` marks a widget input shown as a socket (``"widget": {"name": ...}``)."""
    slot: dict[str, Any] = {"localized_name": name, "name": name, "type": kind, "link": link}
    if widget:
        slot["widget"] = {"name": name}
    return slot


def out(name: str, kind: str, links: Sequence[int] = ()) -> dict[str, Any]:
    return {"localized_name": name, "name": name, "type": kind, "links": list(links)}


def link(link_id: int, origin: int, origin_slot: int, target: int, target_slot: int, kind: str) -> dict[str, Any]:
    """A link object (schema 1: inside subgraph definitions)."""
    return {"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
            "target_slot": target_slot, "type": kind}


def definition(def_id: str, name: str, *, inputs: Sequence[tuple[str, str]] = (),
               outputs: Sequence[tuple[str, str]] = (), nodes: Sequence[dict[str, Any]] = (),
               links: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A subgraph definition; each input's/output's ``linkIds`` are filled in from ``links``."""
    def io(index: int, io_name: str, kind: str, side: str) -> dict[str, Any]:
        if side == "in":
            ids = [lk["id"] for lk in links if lk["origin_id"] == SUBGRAPH_IN and lk["origin_slot"] == index]
        else:
            ids = [lk["id"] for lk in links if lk["target_id"] == SUBGRAPH_OUT and lk["target_slot"] == index]
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{def_id}/{side}/{index}")), "name": io_name,
                "type": kind, "linkIds": ids, "localized_name": io_name, "pos": [0, 20 * index]}

    return {
        "id": def_id, "version": 1, "state": {"lastGroupId": 0, "lastNodeId": 99, "lastLinkId": 99,
                                              "lastRerouteId": 0},
        "revision": 0, "config": {}, "name": name,
        "inputNode": {"id": SUBGRAPH_IN, "bounding": [0, 0, 120, 60]},
        "outputNode": {"id": SUBGRAPH_OUT, "bounding": [600, 0, 120, 60]},
        "inputs": [io(i, n, k, "in") for i, (n, k) in enumerate(inputs)],
        "outputs": [io(i, n, k, "out") for i, (n, k) in enumerate(outputs)],
        "widgets": [], "nodes": list(nodes), "groups": [], "links": list(links), "extra": {},
    }


def workflow(nodes: Sequence[dict[str, Any]], links: Sequence[list[Any]], *,
             subgraphs: Sequence[dict[str, Any]] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A top-level workflow (schema 0.4) with its subgraph definitions."""
    saved: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, repr([n["id"] for n in nodes]))), "revision": 0,
        "last_node_id": max([n["id"] for n in nodes if isinstance(n["id"], int)] or [0]),
        "last_link_id": max([lk[0] for lk in links] or [0]), "nodes": list(nodes), "links": list(links),
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}, **(extra or {})},
        "version": 0.4,
    }
    if subgraphs:
        saved["definitions"] = {"subgraphs": list(subgraphs)}
    return saved
