"""ComfyUI's graph semantics in the executor: lists, lazy inputs, custom validation, node expansion."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from engine.cache import OutputCache
from engine.context import RunContext
from engine.errors import ValidationFailed
from engine.events import Executed, Executing, ListSink
from engine.executor import ExecutionOutcome, Executor
from engine.folders import Folders
from engine.node import Input, Node, NodeOutput, Output
from engine.registry import NodeRegistry
from engine.types import ANY, BOOLEAN, COMBO, INT, STRING
from engine.validate import validate_prompt


class Counted(Node):
    category = "test"
    calls: ClassVar[Counter[str]] = Counter()

    def ran(self) -> None:
        self.calls[type(self).__name__] += 1


class Ints(Counted):
    """Emit the comma-separated integers as a list."""

    inputs = (Input("values", STRING, default="1,2,3"),)
    outputs = (Output(INT, is_list=True),)

    def run(self, ctx: RunContext, values: str) -> tuple[list[int]]:
        self.ran()
        return ([int(v) for v in values.split(",") if v.strip()],)


class Num(Counted):
    inputs = (Input("value", INT, default=0),)
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, value: int) -> tuple[int]:
        self.ran()
        return (value,)


class Add(Counted):
    inputs = (Input("a", INT, default=0), Input("b", INT, default=0))
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, a: int, b: int) -> tuple[int]:
        self.ran()
        return (a + b,)


class Sum(Counted):
    """Takes every input as a list: one call, the total."""

    input_is_list = True
    inputs = (Input("values", INT, default=0),)
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, values: list[int]) -> tuple[int]:
        self.ran()
        return (sum(values),)


class Show(Counted):
    inputs = (Input("value", ANY),)
    output_node = True

    def run(self, ctx: RunContext, value: Any) -> NodeOutput:
        self.ran()
        return NodeOutput(ui={"text": [str(value)]})


class Switch(Counted):
    """Pass on_true or on_false; only the chosen one is computed."""

    inputs = (Input("choose", BOOLEAN, default=True), Input("on_true", INT, lazy=True, socket_only=True),
              Input("on_false", INT, lazy=True, socket_only=True))
    outputs = (Output(INT),)

    def check_lazy_status(self, ctx: RunContext, choose: bool, on_true: Any, on_false: Any) -> list[str]:
        wanted = "on_true" if choose else "on_false"
        return [wanted] if (on_true if choose else on_false) is None else []

    def run(self, ctx: RunContext, choose: bool, on_true: Any, on_false: Any) -> tuple[int]:
        self.ran()
        return (on_true if choose else on_false,)


class AddMany(Counted):
    """Expand into ``count`` chained Add nodes adding ``step`` each; the result links to the last."""

    inputs = (Input("start", INT, default=0), Input("count", INT, default=3, min=1),
              Input("step", INT, default=1), Input("show", BOOLEAN, default=False))
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, start: int, count: int, step: int, show: bool) -> NodeOutput:
        self.ran()
        graph = ctx.graph_builder()
        last: Any = start
        for _ in range(count):
            last = graph.node("Add", a=last, b=step).out(0)
        if show:
            graph.node("Show", value=last)
        return NodeOutput((last,), expand=graph.finalize())


class BadExpand(Counted):
    inputs = (Input("mode", COMBO, choices=("unknown_type", "bad_link")),)
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, mode: str) -> NodeOutput:
        graph = ctx.graph_builder()
        if mode == "unknown_type":
            node = graph.node("NoSuchNode", value=1)
            return NodeOutput((node.out(0),), expand=graph.finalize())
        node = graph.node("Num", value=1)
        return NodeOutput((node.out(3),), expand=graph.finalize())


class Gate(Counted):
    """Wait for the test's event (or an interrupt)."""

    opened: ClassVar[threading.Event] = threading.Event()
    entered: ClassVar[threading.Event] = threading.Event()
    inputs = (Input("a", INT, default=0),)
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, a: int) -> tuple[int]:
        self.ran()
        self.entered.set()
        while not self.opened.wait(0.01):
            ctx.check_interrupted()
        return (a,)


class GatedExpand(Counted):
    inputs = (Input("a", INT, default=0),)
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, a: int) -> NodeOutput:
        self.ran()
        graph = ctx.graph_builder()
        first = graph.node("Add", a=a, b=1)
        gate = graph.node("Gate", a=first.out(0))
        return NodeOutput((gate.out(0),), expand=graph.finalize())


class Pick(Counted):
    """A file name from a fixed list, or any name ending in " [output]" (checked by the node itself)."""

    validated_inputs = ("name",)
    inputs = (Input("name", COMBO, choices=("a.png", "b.png")),)
    outputs = (Output(STRING),)

    @classmethod
    def validate_inputs(cls, folders: Folders, inputs: dict[str, Any]) -> str | None:
        name = inputs.get("name", "")
        if name in ("a.png", "b.png") or name.endswith(" [output]"):
            return None
        return f"input 'name': {name!r} is neither a listed file nor 'NAME [output]'"

    def run(self, ctx: RunContext, name: str) -> tuple[str]:
        return (name,)


NODES = (Ints, Num, Add, Sum, Show, Switch, AddMany, BadExpand, Gate, GatedExpand, Pick)


@pytest.fixture
def registry() -> NodeRegistry:
    made = NodeRegistry()
    for cls in NODES:
        made.register(cls)
    Counted.calls.clear()
    return made


@pytest.fixture
def executor(registry: NodeRegistry, folders: Folders) -> Executor:
    return Executor(registry, folders, OutputCache(max_bytes=10**8, max_entries=1000))


def run(executor: Executor, prompt: dict[str, Any], **kw: Any) -> tuple[ExecutionOutcome, ListSink]:
    sink = ListSink()
    outcome = executor.execute(prompt, "p", sink, **kw)
    return outcome, sink


def texts(outcome: ExecutionOutcome, node_id: str) -> list[str]:
    return list(outcome.outputs[node_id]["text"])


# ---------------------------------------------------------------------- lists


def test_list_output_fans_out_and_merges(executor: Executor) -> None:
    prompt = {"1": {"class_type": "Ints", "inputs": {"values": "1,2,3"}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Sum", "inputs": {"values": ["2", 0]}},
              "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.status_str == "success", outcome.messages
    assert Counted.calls["Add"] == 3 and Counted.calls["Sum"] == 1
    assert texts(outcome, "3") == ["11", "12", "13"]  # one item per call, UI lists merged
    assert texts(outcome, "5") == ["36"]


def test_shorter_list_repeats_its_last_item(executor: Executor) -> None:
    prompt = {"1": {"class_type": "Ints", "inputs": {"values": "1,2,3,4"}},
              "2": {"class_type": "Ints", "inputs": {"values": "10,20"}},
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    outcome, _ = run(executor, prompt)
    assert texts(outcome, "4") == ["11", "22", "23", "24"]


def test_empty_list_runs_no_calls(executor: Executor) -> None:
    prompt = {"1": {"class_type": "Ints", "inputs": {"values": ""}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
              "3": {"class_type": "Sum", "inputs": {"values": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    outcome, _ = run(executor, prompt)
    assert Counted.calls["Add"] == 0
    assert texts(outcome, "4") == ["0"]


def test_list_values_are_cached_like_any_other(executor: Executor) -> None:
    prompt = {"1": {"class_type": "Ints", "inputs": {"values": "1,2"}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    run(executor, prompt)
    Counted.calls.clear()
    outcome, _ = run(executor, prompt)
    assert sum(Counted.calls.values()) == 0
    assert texts(outcome, "3") == ["2", "3"]


# ---------------------------------------------------------------------- lazy inputs


def _switch_prompt(choose: bool) -> dict[str, Any]:
    return {"1": {"class_type": "Num", "inputs": {"value": 1}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 100}},
            "3": {"class_type": "Num", "inputs": {"value": 7}},
            "4": {"class_type": "Switch", "inputs": {"choose": choose, "on_true": ["2", 0], "on_false": ["3", 0]}},
            "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}}}


def test_lazy_branch_that_is_not_chosen_never_runs(executor: Executor) -> None:
    outcome, sink = run(executor, _switch_prompt(False))
    assert texts(outcome, "5") == ["7"]
    assert Counted.calls["Add"] == 0 and Counted.calls["Num"] == 1
    assert "2" not in outcome.executed and "1" not in outcome.executed
    executing = [e.node for e in sink.events if isinstance(e, Executing)]
    assert executing.count("4") == 1  # announced once although it ran twice (ask, then run)


def test_lazy_switch_flip_runs_only_the_other_branch(executor: Executor) -> None:
    run(executor, _switch_prompt(False))
    Counted.calls.clear()
    outcome, _ = run(executor, _switch_prompt(True))
    assert texts(outcome, "5") == ["101"]
    assert Counted.calls == Counter({"Num": 1, "Add": 1, "Switch": 1, "Show": 1})
    Counted.calls.clear()
    outcome, _ = run(executor, _switch_prompt(True))
    assert sum(Counted.calls.values()) == 0 and texts(outcome, "5") == ["101"]


def test_lazy_input_already_computed_elsewhere_is_passed(executor: Executor) -> None:
    prompt = _switch_prompt(True)
    prompt["6"] = {"class_type": "Show", "inputs": {"value": ["3", 0]}}  # node 3 runs anyway
    outcome, _ = run(executor, prompt)
    assert texts(outcome, "5") == ["101"] and texts(outcome, "6") == ["7"]


# ---------------------------------------------------------------------- validation hook


def test_validate_inputs_replaces_the_choice_check(registry: NodeRegistry, folders: Folders) -> None:
    ok = {"1": {"class_type": "Pick", "inputs": {"name": "x.png [output]"}},
          "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert set(validate_prompt(ok, registry, folders).nodes) == {"1", "2"}
    bad = {"1": {"class_type": "Pick", "inputs": {"name": "x.png"}},
           "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    with pytest.raises(ValidationFailed) as info:
        validate_prompt(bad, registry, folders)
    assert "neither a listed file" in info.value.errors[0].message
    assert info.value.errors[0].node_id == "1"


# ---------------------------------------------------------------------- expansion


def _expand_prompt(count: int, show: bool = False) -> dict[str, Any]:
    return {"1": {"class_type": "AddMany", "inputs": {"start": 5, "count": count, "step": 2, "show": show}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def test_expansion_runs_the_graph_in_the_node_place(executor: Executor) -> None:
    outcome, sink = run(executor, _expand_prompt(3))
    assert outcome.status_str == "success", outcome.messages
    assert texts(outcome, "2") == ["11"]
    assert Counted.calls["Add"] == 3
    inner = [n for n in outcome.executed if n.startswith("1.")]
    assert inner == ["1.0.0.1", "1.0.0.2", "1.0.0.3"]  # ComfyUI's "{parent}.{call}.{graph}.{n}" ids
    shown_as = {e.node: e.display_node for e in sink.events if isinstance(e, Executing)}
    assert shown_as["1.0.0.2"] == "1"


def test_expansion_rerun_is_cached_and_partial(executor: Executor) -> None:
    run(executor, _expand_prompt(3))
    Counted.calls.clear()
    outcome, _ = run(executor, _expand_prompt(3))
    assert sum(Counted.calls.values()) == 0 and texts(outcome, "2") == ["11"]
    outcome, _ = run(executor, _expand_prompt(4))
    assert texts(outcome, "2") == ["13"]
    assert Counted.calls["AddMany"] == 1 and Counted.calls["Add"] == 1  # the first three inner nodes are cached


def test_expanded_output_node_reports_its_parent(executor: Executor) -> None:
    outcome, sink = run(executor, _expand_prompt(2, show=True))
    inner_show = "1.0.0.3"
    assert texts(outcome, inner_show) == ["9"]
    assert outcome.meta[inner_show]["parent_node"] == "1"
    assert outcome.meta[inner_show]["display_node"] == "1"
    assert any(isinstance(e, Executed) and e.node == inner_show for e in sink.events)


def test_expansion_per_list_item_uses_the_call_index(executor: Executor) -> None:
    prompt = {"1": {"class_type": "Ints", "inputs": {"values": "0,100"}},
              "2": {"class_type": "AddMany", "inputs": {"start": ["1", 0], "count": 2, "step": 1, "show": False}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    outcome, _ = run(executor, prompt)
    assert texts(outcome, "3") == ["2", "102"]
    assert {"2.0.0.1", "2.1.0.1"} <= set(outcome.executed)


@pytest.mark.parametrize(("mode", "words"), [("unknown_type", "NoSuchNode"), ("bad_link", "output 3")])
def test_bad_expansion_is_an_error_of_the_node(executor: Executor, mode: str, words: str) -> None:
    prompt = {"1": {"class_type": "BadExpand", "inputs": {"mode": mode}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.status_str == "error" and outcome.error is not None
    assert outcome.error.node_id == "1" and words in outcome.error.message


def test_interrupt_inside_an_expansion_then_rerun(executor: Executor) -> None:
    Gate.opened.clear()
    Gate.entered.clear()
    interrupt = threading.Event()
    prompt = {"1": {"class_type": "GatedExpand", "inputs": {"a": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    result: dict[str, ExecutionOutcome] = {}
    worker = threading.Thread(target=lambda: result.update(first=run(executor, prompt, interrupt=interrupt)[0]))
    worker.start()
    assert Gate.entered.wait(5)
    interrupt.set()
    worker.join(5)
    first = result["first"]
    assert first.interrupted and first.status_str == "error"
    Counted.calls.clear()
    Gate.opened.set()
    outcome, _ = run(executor, prompt)
    assert texts(outcome, "2") == ["2"]
    assert Counted.calls["Add"] == 0  # the inner Add finished before the interrupt: cached


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    made = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp", ())
    made.ensure()
    return made


def test_any_type_input_takes_a_literal_or_any_link(executor: Executor) -> None:
    prompt = {"1": {"class_type": "Show", "inputs": {"value": "plain text"}},
              "2": {"class_type": "Show", "inputs": {"value": {"__value__": [1, 2]}}},
              "3": {"class_type": "Pick", "inputs": {"name": "a.png"}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    outcome, _ = run(executor, prompt)
    assert texts(outcome, "1") == ["plain text"]
    assert texts(outcome, "2") == ["[1, 2]"]
    assert texts(outcome, "4") == ["a.png"]
