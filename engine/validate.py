"""Whole-graph validation before anything runs. Returns every error at once, per node.

Checks, for every node an output needs: known class, every required input present, links that
point at an existing node and output index of a compatible type, literal values of the right type
(coerced where that is unambiguous: ``"1.5"`` -> 1.5, ``"false"`` -> False, never ``bool("false")``),
within min/max and among the choices, and no cycles. A required widget input the prompt leaves out takes
its declared default and is listed in ``warnings`` (prompts older than the input still run); a socket
input, or a widget without a default, is an error. A node that is invalid only because something
upstream is invalid is not reported itself. Outputs whose graph is valid are kept; the prompt fails
only when no output survives (ComfyUI's behaviour), and the errors of dropped outputs are returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import (
    BadLink,
    BadValue,
    Cycle,
    GraphError,
    MissingInput,
    NoOutputs,
    NotInChoices,
    TypeMismatch,
    UnknownNode,
    ValidationFailed,
    ValueTooLarge,
    ValueTooSmall,
)
from engine.folders import Folders
from engine.node import SEED_MAX, Input, Node
from engine.registry import NodeRegistry
from engine.types import ANY, BOOLEAN, COMBO, FLOAT, INT, TEXT_TYPES, can_link
from engine.workflow import describe_node, is_link, node_title, parse_api_prompt

#: The widest INT a literal may hold: signed 64-bit below, ComfyUI's unsigned seed range above.
INT_MIN = -(2**63)
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class GraphNode:
    """A validated node: its class, coerced literal inputs and links ``name -> (source, index)``."""

    id: str
    cls: type[Node]
    literals: dict[str, Any]
    links: dict[str, tuple[str, int]]


@dataclass
class ValidatedPrompt:
    """The part of a prompt that will run: nodes the outputs need, in no particular order."""

    nodes: dict[str, GraphNode]
    outputs: list[str]
    node_errors: dict[str, Any] = field(default_factory=dict)
    #: Inputs the prompt left out that took their declared default: ``{node_id, class_type, input_name,
    #: message}`` each (prompts written before an input was added, e.g. VAEEncodeForInpaint's grow_mask_by).
    warnings: list[dict[str, Any]] = field(default_factory=list)


def node_sort_key(node_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the others alphabetically: a stable, human order."""
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def coerce_value(spec: Input, value: Any, choices: list[str] | None) -> Any:
    """Coerce one literal to its input's type, or raise ValueError with the reason."""
    if isinstance(value, Mapping) and set(value) == {"__value__"}:
        value = value["__value__"]
    kind = spec.type
    if kind == INT:
        return _to_int(value)
    if kind == FLOAT:
        return _to_float(value)
    if kind == BOOLEAN:
        return _to_bool(value)
    if kind == ANY:  # "*" takes any JSON value as is (ComfyUI's any type)
        return value
    if kind in TEXT_TYPES:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expects text, got {type(value).__name__}")
    if kind == COMBO:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"expects one of the listed choices, got {type(value).__name__}")
        return str(value)
    raise ValueError(f"an input of type {kind} cannot take a literal value; link it to a {kind} output")


def _to_int(value: Any) -> int:
    number = _parse_int(value)
    if not INT_MIN <= number <= SEED_MAX:
        raise ValueError(f"is out of range: {_short(value)} does not fit in 64 bits; send a whole number "
                         f"from {INT_MIN} to {SEED_MAX}")
    return number


def _short(value: Any) -> str:
    """A value for a message, cut to a readable length (a 400-digit number stays recognisable)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expects a whole number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = float(text) if _is_number(text) else math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
    raise ValueError(f"expects a whole number, got {_short(value)}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expects a number, got a boolean")
    number = math.nan
    try:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and _is_number(value.strip()):
            number = float(value.strip())
    except OverflowError as exc:
        raise ValueError(f"is out of range: {_short(value)} is too large for a float; send a finite "
                         "number") from exc
    if not math.isfinite(number):
        raise ValueError(f"expects a finite number, got {_short(value)}")
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expects true or false, got {value!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Validator:
    def __init__(self, prompt: dict[str, dict[str, Any]], registry: NodeRegistry, folders: Folders) -> None:
        self.prompt = prompt
        self.registry = registry
        self.folders = folders
        self.errors: list[GraphError] = []
        self.warnings: list[dict[str, Any]] = []
        self.valid: dict[str, bool] = {}
        self.nodes: dict[str, GraphNode] = {}
        self._choices: dict[tuple[str, str], list[str]] = {}

    def output_ids(self, targets: Iterable[str] | None) -> list[str]:
        outs = [nid for nid, node in self.prompt.items()
                if (cls := self.registry.get(node["class_type"])) is not None and cls.output_node]
        if targets is not None:
            wanted = {str(t) for t in targets}
            outs = [nid for nid in outs if nid in wanted]
        return sorted(outs, key=node_sort_key)

    def validate_from(self, output_id: str) -> bool:
        """Iterative DFS (no recursion limit) that validates each ancestor once; True if all ok."""
        state: dict[str, int] = {}  # 1 = on the stack, 2 = finished (this walk)
        stack: list[tuple[str, bool]] = [(output_id, False)]
        while stack:
            node_id, expanded = stack.pop()
            if node_id in self.valid:
                continue
            if expanded:
                state[node_id] = 2
                self.valid[node_id] = self._check_node(node_id)
                continue
            if state.get(node_id) == 1:
                continue
            state[node_id] = 1
            stack.append((node_id, True))
            for source in self._link_sources(node_id):
                if state.get(source) == 1:
                    self._report_cycle(node_id, source)
                elif source not in self.valid:
                    stack.append((source, False))
        return self.valid.get(output_id, False)

    def _link_sources(self, node_id: str) -> list[str]:
        inputs = self.prompt[node_id]["inputs"]
        return [v[0] for v in reversed(list(inputs.values())) if is_link(v) and v[0] in self.prompt]

    def _report_cycle(self, node_id: str, source: str) -> None:
        kind = self.prompt[node_id]["class_type"]
        self.errors.append(Cycle(node_id, f"node {node_id} ({kind}) depends on node {source}, which depends "
                                 f"back on node {node_id}; remove one link of the loop", class_type=kind))
        self.valid[node_id] = False

    def _check_node(self, node_id: str) -> bool:
        raw = self.prompt[node_id]
        kind = raw["class_type"]
        cls = self.registry.get(kind)
        if cls is None:
            self.errors.append(UnknownNode(
                node_id, f"{describe_node(node_id, raw)} has unknown type {kind[:100]!r}; check the spelling "
                "or install the node that provides it", class_type=kind, extra_info={"title": node_title(raw)}))
            return False
        ok = True
        literals: dict[str, Any] = {}
        links: dict[str, tuple[str, int]] = {}
        for spec in cls.inputs:
            result = self._check_input(node_id, cls, spec, raw["inputs"])
            if result is _INVALID:
                ok = False
            elif isinstance(result, tuple):
                links[spec.name] = result
            elif result is not _ABSENT:
                literals[spec.name] = result
        if ok:
            ok = self._node_check(node_id, cls, literals)
        if ok:
            self.nodes[node_id] = GraphNode(node_id, cls, literals, links)
        return ok

    def _node_check(self, node_id: str, cls: type[Node], literals: dict[str, Any]) -> bool:
        """The node's own ``validate_inputs`` hook (ComfyUI's VALIDATE_INPUTS)."""
        try:
            message = cls.validate_inputs(self.folders, dict(literals))
        except Exception as exc:  # noqa: BLE001 - a failing hook is the node's validation error
            message = f"{type(exc).__name__}: {exc}"
        if message is None:
            return True
        self.errors.append(BadValue(node_id, f"node {node_id} ({cls.type_name}): {message}",
                                    class_type=cls.type_name))
        return False

    def _check_input(self, node_id: str, cls: type[Node], spec: Input, inputs: Mapping[str, Any]) -> Any:
        where = f"node {node_id} ({cls.type_name}) input '{spec.name}'"
        if spec.name not in inputs:
            if spec.optional:
                return _ABSENT
            if spec.is_widget and spec.default is not None:
                return self._default(node_id, cls, spec, where)
            fix = "set a value" if spec.is_widget else f"link a {spec.type} output to it"
            return self._fail(MissingInput(node_id, f"{where} is required: {fix}",
                                           input_name=spec.name, class_type=cls.type_name))
        value = inputs[spec.name]
        if is_link(value):
            return self._check_link(node_id, cls, spec, value, where)
        if isinstance(value, list) and not spec.is_widget:
            return self._fail(BadLink(node_id, f"{where} must be a link [node_id, output_index], got {value!r}",
                                      input_name=spec.name, class_type=cls.type_name))
        return self._check_literal(node_id, cls, spec, value, where)

    def _default(self, node_id: str, cls: type[Node], spec: Input, where: str) -> Any:
        """A required widget the prompt left out takes its declared default, with a warning (ComfyUI's
        prompts from before the input existed still run)."""
        value = self._check_literal(node_id, cls, spec, spec.default, where)
        if value is not _INVALID:
            self.warnings.append({"node_id": node_id, "class_type": cls.type_name, "input_name": spec.name,
                                  "message": f"{where} is missing; it takes its default {spec.default!r}"})
        return value

    def _check_link(self, node_id: str, cls: type[Node], spec: Input, value: list[Any], where: str) -> Any:
        source, index = str(value[0]), value[1]
        if source not in self.prompt:
            return self._fail(BadLink(node_id, f"{where} is linked to node {source}, which is not in the "
                                      "prompt; relink it", input_name=spec.name, class_type=cls.type_name))
        source_cls = self.registry.get(self.prompt[source]["class_type"])
        if source_cls is None or not self.valid.get(source, False):
            return _INVALID  # reported at the source
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(source_cls.outputs):
            return self._fail(BadLink(node_id, f"{where} reads output {index!r} of node {source} "
                                      f"({source_cls.type_name}), which has {len(source_cls.outputs)} "
                                      "output(s)", input_name=spec.name, class_type=cls.type_name))
        out_type = source_cls.outputs[index].type
        if not can_link(out_type, spec.type):
            return self._fail(TypeMismatch(
                node_id, f"{where} expects {spec.type} but is linked to output {index} of node {source} "
                f"({source_cls.type_name}), which gives {out_type}; link a {spec.type} output instead",
                input_name=spec.name, class_type=cls.type_name,
                extra_info={"received_type": out_type, "linked_node": [source, index]}))
        return (source, index)

    def _check_literal(self, node_id: str, cls: type[Node], spec: Input, value: Any, where: str) -> Any:
        if spec.name in cls.validated_inputs:  # the node's validate_inputs checks it instead
            try:
                return coerce_value(spec, value, None)
            except ValueError as exc:
                return self._fail(BadValue(node_id, f"{where} {exc}", input_name=spec.name,
                                           class_type=cls.type_name))
        choices = self._choice_list(cls, spec) if spec.type == COMBO else None
        info = {"input_config": spec.spec(self.folders) if choices is None else [choices, spec.options()],
                "received_value": value}
        try:
            coerced = coerce_value(spec, value, choices)
        except ValueError as exc:
            return self._fail(BadValue(node_id, f"{where} {exc}", input_name=spec.name,
                                       class_type=cls.type_name, extra_info=info))
        if choices is not None and coerced not in choices:
            shown = ", ".join(repr(c) for c in choices[:20]) + (" ..." if len(choices) > 20 else "")
            return self._fail(NotInChoices(node_id, f"{where}: {coerced!r} is not one of [{shown}]",
                                           input_name=spec.name, class_type=cls.type_name, extra_info=info))
        if spec.min is not None and isinstance(coerced, int | float) and coerced < spec.min:
            return self._fail(ValueTooSmall(node_id, f"{where} is {coerced}, below its minimum {spec.min}",
                                            input_name=spec.name, class_type=cls.type_name, extra_info=info))
        if spec.max is not None and isinstance(coerced, int | float) and coerced > spec.max:
            return self._fail(ValueTooLarge(node_id, f"{where} is {coerced}, above its maximum {spec.max}",
                                            input_name=spec.name, class_type=cls.type_name, extra_info=info))
        return coerced

    def _choice_list(self, cls: type[Node], spec: Input) -> list[str]:
        key = (cls.type_name, spec.name)
        if key not in self._choices:
            self._choices[key] = spec.choice_list(self.folders)
        return self._choices[key]

    def _fail(self, error: GraphError) -> Any:
        self.errors.append(error)
        return _INVALID

    def ancestors(self, output_id: str) -> set[str]:
        seen = {output_id}
        stack = [output_id]
        while stack:
            for source in self._link_sources(stack.pop()):
                if source not in seen:
                    seen.add(source)
                    stack.append(source)
        return seen


_INVALID = object()
_ABSENT = object()


def validate_prompt(
    prompt: Any,
    registry: NodeRegistry,
    folders: Folders,
    targets: Iterable[str] | None = None,
) -> ValidatedPrompt:
    """Validate an API-format prompt. Raises ValidationFailed listing every error if nothing can run."""
    checker = _Validator(parse_api_prompt(prompt), registry, folders)
    outputs = checker.output_ids(targets)
    if not outputs:
        _check_unknown_classes(checker)  # an unknown class may well be the missing output: name it first
        if checker.errors:
            raise ValidationFailed([_unknown_summary(checker.errors), *checker.errors])
        raise ValidationFailed([NoOutputs(None, "the prompt has no output node (SaveImage, PreviewImage, "
                                          "...); add one so there is something to compute")])
    good = [out for out in outputs if checker.validate_from(out)]
    _check_unknown_classes(checker)
    failed = ValidationFailed(checker.errors, _dependents(checker, outputs)) if checker.errors else None
    if not good:
        assert failed is not None
        raise failed
    needed: set[str] = set()
    for out in good:
        needed |= checker.ancestors(out)
    nodes = {nid: checker.nodes[nid] for nid in needed}
    warnings = [w for w in checker.warnings if w["node_id"] in nodes]
    return ValidatedPrompt(nodes=nodes, outputs=good, node_errors=failed.node_errors() if failed else {},
                           warnings=warnings)


def _check_unknown_classes(checker: _Validator) -> None:
    """Unknown classes are found even where no output reaches them, so a typo never goes unnoticed."""
    for node_id, raw in checker.prompt.items():
        if node_id not in checker.valid and checker.registry.get(raw["class_type"]) is None:
            checker.valid[node_id] = checker._check_node(node_id)


def _unknown_summary(unknown: list[GraphError]) -> GraphError:
    """The top-level error of a prompt with no known output node but unknown classes."""
    listed = "; ".join(e.message for e in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
    return UnknownNode(None, f"the prompt has no known output node, and {len(unknown)} node(s) have an unknown "
                       f"type (perhaps the output): {listed}")


def _dependents(checker: _Validator, outputs: list[str]) -> dict[str, list[str]]:
    bad = {e.node_id for e in checker.errors if e.node_id is not None}
    result: dict[str, list[str]] = {}
    for out in outputs:
        for node_id in checker.ancestors(out) & bad:
            result.setdefault(node_id, []).append(out)
    return result
