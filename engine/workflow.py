"""Workflow formats: ComfyUI's API format and the editor (litegraph) format, and editor -> API.

API format: ``{node_id: {"class_type": str, "inputs": {name: value | [source_id, output_index]}}}``.
A value is a link when it is a two-item list ``[str, int]``; a widget value that is itself a list
is wrapped as ``{"__value__": [...]}``.

Editor format (litegraph, schema version 0.4 and 1): ``nodes`` with ``widgets_values`` in the
order of the node's widget inputs (an input with ``control_after_generate`` takes one extra slot
for the control mode), and ``links`` as ``[id, origin_id, origin_slot, target_id, target_slot,
type]`` lists or objects. :func:`ui_to_api` converts it the way the editor itself does: virtual
nodes (Note, Reroute, PrimitiveNode) disappear, muted nodes are dropped, bypassed nodes are passed
through, links through reroutes are followed and primitive nodes become literal values. A widget with no
saved value (ComfyUI's default workflow saves SaveImage without ``widgets_values``) takes its declared
default. Subgraphs (``definitions.subgraphs``) and legacy group nodes (``extra.groupNodes``) are expanded
first (:mod:`engine.subgraphs`): their nodes run under ComfyUI's execution ids, e.g. ``"74:10"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import BadLink, GraphError, MalformedNode, UnknownNode, ValidationFailed
from engine.node import Node
from engine.registry import NodeRegistry
from engine.subgraphs import CONTEXT, MODE_ALWAYS, MODE_BYPASS, MODE_NEVER, OVERRIDES, LinkTable, flatten, whole

__all__ = ["MODE_ALWAYS", "MODE_BYPASS", "MODE_NEVER", "VIRTUAL_NODES", "ApiNode", "describe_node", "is_link",
           "is_ui_workflow", "node_title", "parse_api_prompt", "ui_to_api"]

#: Editor-only nodes that never reach the executor.
VIRTUAL_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})


def is_link(value: Any) -> bool:
    """ComfyUI's rule: a two-item list whose first item is a node id string and second an index."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


class ApiNode(BaseModel):
    """One node of an API-format prompt."""

    model_config = ConfigDict(extra="allow")

    class_type: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)


def parse_api_prompt(obj: Any) -> dict[str, dict[str, Any]]:
    """Check the shape of an API-format prompt; returns a fresh, normalised copy.

    Raises ValidationFailed naming every malformed node.
    """
    if not isinstance(obj, Mapping) or not obj:
        raise ValidationFailed([MalformedNode(None, "the prompt must be a non-empty JSON object "
                                              "{node_id: {class_type, inputs}}")])
    errors: list[GraphError] = []
    out: dict[str, dict[str, Any]] = {}
    for node_id, raw in obj.items():
        node_id = str(node_id)
        if not isinstance(raw, Mapping):
            errors.append(MalformedNode(node_id, f"node {node_id} must be an object with class_type "
                                        "and inputs"))
            continue
        if not isinstance(raw.get("class_type"), str) or not raw["class_type"]:
            errors.append(_missing_class(node_id, raw))
            continue
        try:
            node = ApiNode.model_validate(raw)
        except ValueError as exc:
            errors.append(MalformedNode(node_id, f"node {node_id} is malformed: {_first_line(exc)}; it "
                                        "needs a non-empty 'class_type' string and an 'inputs' object",
                                        class_type=str(raw.get("class_type"))))
            continue
        entry: dict[str, Any] = {"class_type": node.class_type, "inputs": dict(node.inputs)}
        if isinstance(raw.get("_meta"), Mapping):
            entry["_meta"] = dict(raw["_meta"])
        out[node_id] = entry
    if errors:
        raise ValidationFailed(errors)
    for entry in out.values():
        entry["inputs"] = {name: _id_as_text(value, out) for name, value in entry["inputs"].items()}
    return out


def _id_as_text(value: Any, prompt: Mapping[str, Any]) -> Any:
    """``[5, 0]`` (a link written with a numeric node id, as some clients send it) as ``["5", 0]``."""
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and not isinstance(value[0], bool)
            and isinstance(value[1], int) and not isinstance(value[1], bool) and str(value[0]) in prompt):
        return [str(value[0]), value[1]]
    return value


def node_title(raw: Mapping[str, Any]) -> str | None:
    """The editor title a client sent in ``_meta.title``, if any."""
    meta = raw.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title if isinstance(title, str) and title else None


def describe_node(node_id: str, raw: Mapping[str, Any]) -> str:
    """``node 5 ('My sampler')``: the id and, when the client sent one, the title."""
    title = node_title(raw)
    return f"node {node_id}" if title is None else f"node {node_id} ({title[:100]!r})"


def _missing_class(node_id: str, raw: Mapping[str, Any]) -> GraphError:
    """A node without a class_type: ComfyUI's editor sends null for a node type it does not know."""
    value = raw.get("class_type")
    got = "is missing" if value is None and "class_type" not in raw else f"is {_json_name(value)}"
    return MalformedNode(node_id, f"{describe_node(node_id, raw)} has no node type: its class_type {got}. "
                         "The editor sends null for a node type it does not know: install the node pack "
                         "that provides it, or remove the node", extra_info={"title": node_title(raw)})


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "an empty string"
    return f"a {type(value).__name__}, not a string"


def is_ui_workflow(obj: Any) -> bool:
    """Whether ``obj`` looks like an editor-format workflow rather than an API prompt."""
    return isinstance(obj, Mapping) and isinstance(obj.get("nodes"), list) and "links" in obj


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _UiConverter:
    """Converts a flat editor graph (:func:`engine.subgraphs.flatten`'s) node by node."""

    def __init__(self, flat: Mapping[str, Any], registry: NodeRegistry, errors: list[GraphError]) -> None:
        self.registry = registry
        self.links = LinkTable(flat["links"])
        self.nodes: dict[str, Mapping[str, Any]] = {str(node["id"]): node for node in flat["nodes"]}
        self.errors = errors

    def convert(self) -> dict[str, dict[str, Any]]:
        prompt: dict[str, dict[str, Any]] = {}
        for node_id, node in self.nodes.items():
            kind = str(node["type"])
            if kind in VIRTUAL_NODES or node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
                continue
            cls = self.registry.get(kind)
            if cls is None:
                title = node.get("title")
                named = f"node {node_id} ({title[:100]!r})" if isinstance(title, str) and title else f"node {node_id}"
                self.errors.append(UnknownNode(node_id, f"{named}{node.get(CONTEXT, '')} has unknown type "
                                               f"{kind[:100]!r}; install the node or remove it from the workflow",
                                               class_type=kind, extra_info={"title": title}))
                continue
            entry: dict[str, Any] = {"class_type": cls.type_name, "inputs": self._inputs(node_id, node)}
            title = node.get("title")
            entry["_meta"] = {"title": title or cls.display_name or cls.type_name}
            prompt[node_id] = entry
        if self.errors:
            raise ValidationFailed(self.errors)
        return prompt

    def _inputs(self, node_id: str, node: Mapping[str, Any]) -> dict[str, Any]:
        cls = self.registry.get(str(node["type"]))
        assert cls is not None
        inputs = _widget_values(cls, node)
        for slot in node.get("inputs") or []:
            if not isinstance(slot, Mapping) or slot.get("link") is None:
                continue
            link_id = whole(slot["link"], "input link", f"node {node_id}")
            resolved = self._resolve(link_id, node_id, str(slot.get("name")))
            if resolved is not None:
                inputs[str(slot.get("name"))] = resolved
        return inputs

    def _resolve(self, link_id: int, node_id: str, input_name: str) -> Any:
        """Follow a link through reroutes and bypassed nodes; a primitive becomes its value."""
        seen: set[int] = set()
        while True:
            if link_id in seen:
                self.errors.append(BadLink(node_id, "links form a loop through reroute or bypassed nodes",
                                           input_name=input_name))
                return None
            seen.add(link_id)
            link = self.links.get(link_id)
            if link is None or link.origin not in self.nodes:
                return None  # a link to a removed node is dropped, as the editor does
            source = self.nodes[link.origin]
            kind = str(source["type"])
            if kind == "PrimitiveNode":
                return _wrap_list(_primitive_value(source))
            if kind == "Reroute" or source.get("mode") == MODE_BYPASS:
                next_link = _passthrough_link(source, link.origin_slot)
                if next_link is None:
                    return None
                link_id = next_link
                continue
            if source.get("mode") == MODE_NEVER:
                return None
            return [link.origin, link.origin_slot]


def _passthrough_link(node: Mapping[str, Any], out_slot: int) -> int | None:
    """The input link a reroute or bypassed node forwards to its output ``out_slot``."""
    slots = [s for s in node.get("inputs") or [] if isinstance(s, Mapping)]
    outputs = node.get("outputs") or []
    out_type = None
    if 0 <= out_slot < len(outputs) and isinstance(outputs[out_slot], Mapping):
        out_type = outputs[out_slot].get("type")
    candidates = [s for s in slots if s.get("link") is not None]
    if str(node.get("type")) != "Reroute" and out_type is not None:
        typed = [s for s in candidates if s.get("type") == out_type]
        if out_slot < len(slots) and slots[out_slot] in typed:
            return whole(slots[out_slot]["link"], "input link", f"node {node.get('id')}")
        candidates = typed
    return whole(candidates[0]["link"], "input link", f"node {node.get('id')}") if candidates else None


def _widget_values(cls: type[Node], node: Mapping[str, Any]) -> dict[str, Any]:
    """The node's widget inputs: its saved ``widgets_values`` (in widget order, a control_after_generate
    widget taking one extra slot; or by name), values set from outside (promoted widgets, group nodes), and
    the declared default for a widget saved without a value, as the editor shows a new widget."""
    values = node.get("widgets_values")
    overrides = node.get(OVERRIDES)
    inputs: dict[str, Any] = {}
    position = 0
    for spec in cls.widget_inputs():
        if isinstance(overrides, Mapping) and spec.name in overrides:
            inputs[spec.name] = _wrap_list(overrides[spec.name])
        elif isinstance(values, Mapping) and spec.name in values:
            inputs[spec.name] = _wrap_list(values[spec.name])
        elif isinstance(values, list) and position < len(values):
            inputs[spec.name] = _wrap_list(values[position])
        elif spec.default is not None:
            inputs[spec.name] = _wrap_list(spec.default)
        elif isinstance(spec.choices, list | tuple) and spec.choices:
            inputs[spec.name] = spec.choices[0]  # the editor's combo starts at its first choice
        position += 2 if spec.control_after_generate else 1
    return inputs


def _primitive_value(node: Mapping[str, Any]) -> Any:
    overrides = node.get(OVERRIDES)
    if isinstance(overrides, Mapping) and "value" in overrides:
        return overrides["value"]
    values = node.get("widgets_values")
    return values[0] if isinstance(values, list) and values else None


def _wrap_list(value: Any) -> Any:
    """Keep list-valued widgets from being mistaken for links."""
    return {"__value__": value} if isinstance(value, list) else value


def ui_to_api(workflow: Mapping[str, Any], registry: NodeRegistry) -> dict[str, dict[str, Any]]:
    """Convert an editor-format workflow into an API-format prompt, by the registry's widget order."""
    if not is_ui_workflow(workflow):
        raise ValidationFailed([MalformedNode(None, "not an editor workflow: it needs 'nodes' and 'links'")])
    flat, errors = flatten(workflow, registry)
    return _UiConverter(flat, registry, errors).convert()
