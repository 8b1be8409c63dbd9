"""Stub nodes for executor tests: no torch, observable, controllable.

``make_registry()`` builds a fresh registry whose node classes record every run in ``calls``,
so tests can count what really ran.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.context import RunContext
from engine.folders import Folders
from engine.node import Input, Node, NodeOutput, Output
from engine.registry import NodeRegistry
from engine.types import ANY, BOOLEAN, COMBO, FLOAT, INT, STRING


@dataclass
class StubWorld:
    registry: NodeRegistry
    calls: Counter[str] = field(default_factory=Counter)
    gate: threading.Event = field(default_factory=threading.Event)


def make_registry() -> StubWorld:
    world = StubWorld(NodeRegistry())
    calls = world.calls
    reg = world.registry.register

    @reg
    class StubInt(Node):
        """Emit an integer."""

        inputs = (Input("value", INT, default=0, min=-1000, max=1000),)
        outputs = (Output(INT),)

        def run(self, ctx: RunContext, value: int) -> tuple[int]:
            calls["StubInt"] += 1
            return (value,)

    @reg
    class StubAdd(Node):
        """a + b."""

        inputs = (Input("a", INT, socket_only=True), Input("b", INT, default=1))
        outputs = (Output(INT, "sum"),)

        def run(self, ctx: RunContext, a: int, b: int) -> tuple[int]:
            calls["StubAdd"] += 1
            return (a + b,)

    @reg
    class StubOptions(Node):
        """Every widget type, for coercion tests."""

        inputs = (
            Input("flag", BOOLEAN, default=False),
            Input("ratio", FLOAT, default=0.5, min=0.0, max=1.0),
            Input("text", STRING, default="", multiline=True),
            Input("mode", COMBO, choices=("fast", "slow")),
            Input("seed", INT, default=0, min=0, max=2**64 - 1, control_after_generate=True),
            Input("extra", INT, default=3, optional=True),
        )
        outputs = (Output(STRING),)

        def run(self, ctx: RunContext, **kw: Any) -> tuple[str]:
            calls["StubOptions"] += 1
            return (repr(sorted(kw.items())),)

    @reg
    class StubOutput(Node):
        """Show a value in the UI."""

        inputs = (Input("value", ANY),)
        output_node = True

        def run(self, ctx: RunContext, value: Any) -> NodeOutput:
            calls["StubOutput"] += 1
            return NodeOutput(ui={"value": [value]})

    @reg
    class StubFail(Node):
        """Raise when ``fail`` is true."""

        inputs = (Input("a", INT, socket_only=True), Input("fail", BOOLEAN, default=True))
        outputs = (Output(INT),)

        def run(self, ctx: RunContext, a: int, fail: bool) -> tuple[int]:
            calls["StubFail"] += 1
            if fail:
                raise ValueError("stub failure on purpose")
            return (a,)

    @reg
    class StubSteps(Node):
        """Report ``steps`` progress updates; sleeps 10 ms before each when ``wait``."""

        inputs = (Input("a", INT, socket_only=True), Input("steps", INT, default=3, min=1),
                  Input("wait", BOOLEAN, default=False))
        outputs = (Output(INT),)

        def run(self, ctx: RunContext, a: int, steps: int, wait: bool) -> tuple[int]:
            calls["StubSteps"] += 1
            for step in range(1, steps + 1):
                if wait:
                    time.sleep(0.01)
                ctx.progress(step, steps)
            return (a,)

    @reg
    class StubReadFile(Node):
        """Read a text file from the input folder (impure: fingerprinted by size + mtime)."""

        inputs = (Input("name", STRING, default="a.txt"),)
        outputs = (Output(STRING),)

        @classmethod
        def fingerprint(cls, folders: Folders, inputs: dict[str, Any]) -> str | None:
            stat = Path(folders.file_path("input", inputs["name"])).stat()
            return f"{stat.st_size}:{stat.st_mtime_ns}"

        def run(self, ctx: RunContext, name: str) -> tuple[str]:
            calls["StubReadFile"] += 1
            return (ctx.folders.file_path("input", name).read_text(),)

    return world


def chain(length: int, start: int = 0) -> dict[str, Any]:
    """StubInt -> StubAdd x length -> StubOutput, ids 1..length+2."""
    prompt: dict[str, Any] = {"1": {"class_type": "StubInt", "inputs": {"value": start}}}
    for i in range(2, length + 2):
        prompt[str(i)] = {"class_type": "StubAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt[str(length + 2)] = {"class_type": "StubOutput", "inputs": {"value": [str(length + 1), 0]}}
    return prompt
