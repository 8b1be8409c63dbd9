"""Legacy group nodes of ComfyUI's editor format, rewritten as subgraph definitions.

Before subgraphs, ComfyUI's frontend (2024 to mid 2025) could fold nodes into a *group node*: the nodes are
saved once in the workflow's ``extra.groupNodes[NAME]`` as ``{nodes, links, external, config?}`` (``links``
as ``[origin index, origin slot, target index, target slot, origin id, type]`` between the nodes by their
index in ``nodes``; ``external`` the ``[index, slot, type]`` outputs used outside), and each use is a node of
type ``workflow>NAME`` (``workflow/NAME`` before frontend 1.2.63). The group node's inputs, outputs and
widgets are derived from its inner nodes the way the frontend's ``GroupNodeConfig`` did:

* inputs: for each inner node in order, its socket inputs not linked inside the group (unless its config
  hides them); then, after every node, its widgets converted to inputs and not linked inside;
* outputs: each inner node's outputs in order, except those used only inside the group (config may show or
  hide them);
* widgets (the group node's ``widgets_values``): each inner node's own widgets in order (a seed's
  control_after_generate value after it; a PrimitiveNode linked inside gives its value), then the converted
  ones; repeated names get the node's title as prefix.

When it runs, inner node ``i`` of group node ``G`` has the id ``"G:i"`` (ComfyUI's ``getInnerNodes``).
:meth:`GroupNodes.as_subgraph` returns a definition in the shape of ``definitions.subgraphs`` and the group
node rewritten as an instance of it, so :mod:`engine.subgraphs` expands both kinds one way. When the group
node's ``widgets_values`` do not have the length this layout expects, the inner nodes keep their saved values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.registry import NodeRegistry

PREFIXES = ("workflow>", "workflow/")
#: Inputs that ComfyUI's group nodes give a control_after_generate widget whatever their declaration says.
_SEED_NAMES = frozenset({"seed", "noise_seed"})
#: Types whose widget has a control_after_generate companion when a PrimitiveNode feeds it.
_CONTROLLED = frozenset({"INT", "FLOAT", "COMBO"})


def group_name(kind: str) -> str | None:
    """NAME of a group node type ``workflow>NAME`` / ``workflow/NAME``; None for other types."""
    for prefix in PREFIXES:
        if kind.startswith(prefix) and len(kind) > len(prefix):
            return kind[len(prefix):]
    return None


@dataclass(frozen=True)
class _GroupInput:
    name: str
    type: Any
    converted: bool  # a widget converted to an input (it has a widget on the group node as well)


@dataclass(frozen=True)
class _Layout:
    """A group node definition: as a subgraph definition, plus its inputs and widgets in order."""

    definition: dict[str, Any]
    inputs: list[_GroupInput]
    #: (inner node index, widget name, has a control_after_generate value after it)
    widgets: list[tuple[int, str, bool]]


class GroupNodes:
    """The ``extra.groupNodes`` of one workflow."""

    def __init__(self, groups: Mapping[str, Any], registry: NodeRegistry) -> None:
        self.groups = groups
        self.registry = registry
        self._layouts: dict[str, _Layout] = {}

    def has(self, kind: str) -> bool:
        name = group_name(kind)
        return name is not None and isinstance(self.groups.get(name), Mapping)

    def as_subgraph(self, kind: str, node: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(definition, instance): the group as a subgraph definition and ``node`` as an instance of it."""
        name = group_name(kind) or ""
        if name not in self._layouts:
            self._layouts[name] = _GroupBuilder(name, self.groups[name], self.registry).build()
        layout = self._layouts[name]
        return layout.definition, _instance(layout, node)


class _GroupBuilder:
    def __init__(self, name: str, data: Mapping[str, Any], registry: NodeRegistry) -> None:
        self.name = name
        self.registry = registry
        raw_nodes = data.get("nodes")
        self.nodes: list[Mapping[str, Any]] = [n if isinstance(n, Mapping) else {}
                                               for n in (raw_nodes if isinstance(raw_nodes, list) else [])]
        config = data.get("config")
        self.config: Mapping[str, Any] = config if isinstance(config, Mapping) else {}
        self.links_to: dict[tuple[int, int], int] = {}
        self.links_from: set[tuple[int, int]] = set()
        self.links: list[dict[str, Any]] = []
        self.link_types: dict[int, Any] = {}
        raw_links = data.get("links")
        for link in raw_links if isinstance(raw_links, list) else []:
            if not isinstance(link, list) or len(link) < 4:
                continue
            origin, origin_slot, target, target_slot = (_index(v) for v in link[:4])
            if origin is None or origin_slot is None or target is None or target_slot is None:
                continue  # a link from outside the group
            kind = link[5] if len(link) > 5 else None
            self.links_to[(target, target_slot)] = self._link(origin, origin_slot, target, target_slot, kind)
            self.links_from.add((origin, origin_slot))
            self.link_types.setdefault(origin, kind)
        raw_external = data.get("external")
        self.external = {(_index(e[0]), _index(e[1])) for e in (raw_external if isinstance(raw_external, list)
                                                                  else []) if isinstance(e, list) and len(e) >= 2}
        self.seen: dict[str, int] = {}

    def _link(self, origin: int | str, origin_slot: int, target: int | str, target_slot: int, kind: Any) -> int:
        link_id = len(self.links) + 1
        self.links.append({"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
                           "target_slot": target_slot, "type": kind})
        return link_id

    def build(self) -> _Layout:
        inputs: list[_GroupInput] = []
        widgets: list[tuple[int, str, bool]] = []
        converted_widgets: list[tuple[int, str, bool]] = []
        boundary: dict[tuple[int, int], int] = {}  # (inner index, slot) -> group input index
        deferred: list[tuple[int, int, Mapping[str, Any]]] = []
        for index, node in enumerate(self.nodes):
            kind = str(node.get("type"))
            cls = self.registry.get(kind)
            saved = _list(node.get("inputs"))
            if kind == "PrimitiveNode":
                if any(origin == index for origin, _ in self.links_from):
                    self._name(node, index, "value")
                    widgets.append((index, "value", self.link_types.get(index) in _CONTROLLED))
                continue
            if cls is None and kind != "Reroute":
                continue  # the frontend skipped nodes it had no definition for
            converted = {s.get("name") for s in saved if isinstance(s, Mapping) and isinstance(s.get("widget"),
                                                                                              Mapping)}
            for spec in cls.widget_inputs() if cls is not None else []:
                if spec.name not in converted:
                    self._name(node, index, spec.name)
                    widgets.append((index, spec.name, spec.control_after_generate or spec.name in _SEED_NAMES))
            for slot_index, slot in enumerate(saved):
                if not isinstance(slot, Mapping):
                    continue
                if isinstance(slot.get("widget"), Mapping):
                    deferred.append((index, slot_index, slot))
                    continue
                if (index, slot_index) in self.links_to:
                    continue
                name = self._name(node, index, str(slot.get("name")))
                if self._input_config(index, str(slot.get("name"))).get("visible") is False:
                    continue
                boundary[(index, slot_index)] = len(inputs)
                inputs.append(_GroupInput(name, slot.get("type"), False))
        for index, slot_index, slot in deferred:
            if (index, slot_index) in self.links_to:
                continue
            widget_name = str(slot["widget"].get("name") or slot.get("name"))
            name = self._name(self.nodes[index], index, str(slot.get("name")))
            cls = self.registry.get(str(self.nodes[index].get("type")))
            found = cls.input_named(widget_name) if cls is not None else None
            control = found is not None and (found.control_after_generate or found.name in _SEED_NAMES)
            converted_widgets.append((index, widget_name, control))
            boundary[(index, slot_index)] = len(inputs)
            inputs.append(_GroupInput(name, slot.get("type"), True))
        nodes = [self._inner_node(index, node, boundary) for index, node in enumerate(self.nodes)]
        outputs = self._outputs()
        definition = {"id": f"{PREFIXES[0]}{self.name}", "name": self.name, "nodes": nodes, "links": self.links,
                      "inputs": [{"name": f"#{k}", "type": inp.type} for k, inp in enumerate(inputs)],
                      "outputs": outputs}
        return _Layout(definition, inputs, widgets + converted_widgets)

    def _inner_node(self, index: int, node: Mapping[str, Any], boundary: dict[tuple[int, int], int]
                    ) -> dict[str, Any]:
        saved = _list(node.get("inputs"))
        inputs = []
        for slot_index, slot in enumerate(saved):
            if not isinstance(slot, Mapping):
                continue
            link = self.links_to.get((index, slot_index))
            if link is None and (index, slot_index) in boundary:
                link = self._link(-10, boundary[(index, slot_index)], index, slot_index, slot.get("type"))
            inputs.append({**slot, "link": link})
        return {**node, "id": index, "inputs": inputs}

    def _outputs(self) -> list[dict[str, Any]]:
        outputs: list[dict[str, Any]] = []
        for index, node in enumerate(self.nodes):
            kind = str(node.get("type"))
            cls = self.registry.get(kind)
            if cls is not None:
                count = len(cls.outputs)
            elif kind == "Reroute" or (kind == "PrimitiveNode" and any(o == index for o, _ in self.links_from)):
                count = 1
            else:
                continue
            saved = _list(node.get("outputs"))
            for slot in range(count):
                inside = (index, slot) in self.links_from and (index, slot) not in self.external
                visible = self._output_config(index, slot).get("visible", not inside)
                if not visible:
                    continue
                out = saved[slot] if slot < len(saved) and isinstance(saved[slot], Mapping) else {}
                kind_of = out.get("type") if out else (cls.outputs[slot].type if cls is not None else "*")
                self._link(index, slot, -20, len(outputs), kind_of)
                outputs.append({"name": str(out.get("name") or kind_of), "type": kind_of})
        return outputs

    def _name(self, node: Mapping[str, Any], index: int, input_name: str) -> str:
        """The group node's name for an inner input or widget (ComfyUI's getInputConfig)."""
        custom = self._input_config(index, input_name).get("name")
        label = next((s.get("label") for s in _list(node.get("inputs")) if isinstance(s, Mapping)
                      and s.get("name") == input_name and isinstance(s.get("label"), str) and s.get("label")), None)
        name = custom if isinstance(custom, str) and custom else label or input_name
        key = name
        title = node.get("title") if isinstance(node.get("title"), str) else None
        if (node.get("type") == "PrimitiveNode" and title) or name in self.seen:
            prefix = f"{title or node.get('type')} "
            key = name = f"{prefix}{input_name}"
            if name in self.seen:
                name = f"{prefix}{self.seen[name]} {input_name}"
        self.seen[key] = self.seen.get(key, 1) + 1
        return name

    def _input_config(self, index: int, name: str) -> Mapping[str, Any]:
        return _config(self.config, index, "input", name)

    def _output_config(self, index: int, slot: int) -> Mapping[str, Any]:
        return _config(self.config, index, "output", str(slot))


def _config(config: Mapping[str, Any], index: int, part: str, key: str) -> Mapping[str, Any]:
    node = config.get(str(index))  # JSON object keys are text
    section = node.get(part) if isinstance(node, Mapping) else None
    entry = section.get(key) if isinstance(section, Mapping) else None
    return entry if isinstance(entry, Mapping) else {}


def _instance(layout: _Layout, node: Mapping[str, Any]) -> dict[str, Any]:
    """The group node as an instance of its definition: inputs under the definition's names, its widget values
    as promoted values of the inner widgets."""
    saved = [s for s in _list(node.get("inputs")) if isinstance(s, Mapping)]
    plain = [k for k, inp in enumerate(layout.inputs) if not inp.converted]
    converted = [k for k, inp in enumerate(layout.inputs) if inp.converted]
    inputs = []
    for slot in saved:
        if isinstance(slot.get("widget"), Mapping):
            names = {slot.get("name"), slot["widget"].get("name")}
            k = next((k for k in converted if layout.inputs[k].name in names), converted[0] if converted else None)
            if k is not None:
                converted.remove(k)
        else:
            k = plain.pop(0) if plain else None
        if k is not None:
            inputs.append({"name": f"#{k}", "type": layout.inputs[k].type, "link": slot.get("link")})
    instance: dict[str, Any] = {**node, "inputs": inputs}
    values = node.get("widgets_values")
    expected = sum(2 if control else 1 for _, _, control in layout.widgets)
    properties = node.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    if isinstance(values, list) and values and len(values) == expected:
        entries, chosen, position = [], [], 0
        for index, widget, control in layout.widgets:
            entries.append([str(index), widget])
            chosen.append(values[position])
            position += 2 if control else 1
        instance["widgets_values"] = chosen
        instance["properties"] = {**properties, "proxyWidgets": entries}
    else:
        instance["widgets_values"] = []
    return instance


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _index(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
