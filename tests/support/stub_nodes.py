"""The stub nodes of every test and of bench/cluster.py: no torch, observable, controllable.

``make_registry()`` gives executor tests a fresh registry of them whose runs and levers (:class:`Controls`)
belong to that registry alone; ``register_stub_nodes(registry, controls)`` adds them to a server's registry.
A process that loads them by name (``main.py --extra-nodes tests.support.stub_nodes``, Ray workers with
``tests.support.stub_nodes:register``) gets them with controls of its own, which no test reads.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engine.context import RunContext
from engine.folders import Folders
from engine.node import Input, Node, NodeOutput, Output
from engine.registry import NodeRegistry
from engine.types import ANY, BOOLEAN, COMBO, FLOAT, INT, STRING

GATE_TIMEOUT = 10.0  # StubGate fails when the test never opens the gate
SLEEP_STEP = 0.05  # StubSleep reports progress once per this many seconds


@dataclass
class Controls:
    """What a test sees of and does to the stub nodes of one registry."""

    calls: Counter[str] = field(default_factory=Counter)  # runs per node class
    gate: threading.Event = field(default_factory=threading.Event)  # StubGate waits until it is set
    entered: threading.Event = field(default_factory=threading.Event)  # StubGate has started
    polled: threading.Event = field(default_factory=threading.Event)  # StubGate checked for an interrupt

    def wait_polled(self, timeout: float) -> bool:
        """Whether a waiting StubGate checks for an interrupt after this call, twice over (so the second
        check began after the call), within ``timeout`` seconds each; False if it stopped (interrupted)."""
        for _ in range(2):
            self.polled.clear()
            if not self.polled.wait(timeout):
                return False
        return True


class StubNode(Node):
    """Base of the stubs: ``controls`` is set per registry by :func:`register_stub_nodes`."""

    category = "stub"
    controls: ClassVar[Controls] = Controls()

    def ran(self) -> None:
        self.controls.calls[type(self).type_name] += 1


class StubInt(StubNode):
    """Emit an integer."""

    inputs = (Input("value", INT, default=0, min=-(10**9), max=10**9),)
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, value: int) -> tuple[int]:
        self.ran()
        return (value,)


class StubAdd(StubNode):
    """a + b."""

    inputs = (Input("a", INT, socket_only=True), Input("b", INT, default=1))
    outputs = (Output(INT, "sum"),)

    def run(self, ctx: RunContext, a: int, b: int) -> tuple[int]:
        self.ran()
        return (a + b,)


class StubOptions(StubNode):
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
        self.ran()
        return (repr(sorted(kw.items())),)


class StubShow(StubNode):
    """Show a value in the UI as text (an output node)."""

    inputs = (Input("value", ANY),)
    output_node = True

    def run(self, ctx: RunContext, value: Any) -> NodeOutput:
        self.ran()
        return NodeOutput(ui={"text": [str(value)]})


class StubFail(StubNode):
    """Raise ValueError("stub failure on purpose") unless ``fail`` is false."""

    inputs = (Input("a", INT, socket_only=True), Input("fail", BOOLEAN, default=True, optional=True))
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, a: int, fail: bool = True) -> tuple[int]:
        self.ran()
        if fail:
            raise ValueError("stub failure on purpose")
        return (a,)


class StubSteps(StubNode):
    """Report ``steps`` progress updates (each honours an interrupt); with ``wait``, 10 ms before each."""

    inputs = (Input("a", INT, socket_only=True), Input("steps", INT, default=3, min=1),
              Input("wait", BOOLEAN, default=False, optional=True))
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, a: int, steps: int, wait: bool = False) -> tuple[int]:
        self.ran()
        for step in range(1, steps + 1):
            if wait:
                time.sleep(0.01)
            ctx.progress(step, steps)  # honours an interrupt
        return (a,)


class StubGate(StubNode):
    """Wait until the test opens the gate (or the prompt is interrupted), checking every 10 ms."""

    inputs = (Input("a", INT, socket_only=True), Input("tag", STRING, default=""))
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, a: int, tag: str) -> tuple[int]:
        self.ran()
        self.controls.entered.set()
        deadline = time.monotonic() + GATE_TIMEOUT
        while not self.controls.gate.wait(0.01):
            ctx.check_interrupted()
            self.controls.polled.set()
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
        return (a,)


class StubSleep(StubNode):
    """Sleep ``seconds`` (checking for interrupts every 10 ms), reporting progress every 50 ms, then pass
    ``value`` on."""

    inputs = (Input("value", INT, default=0, min=-(10**9), max=10**9),
              Input("seconds", FLOAT, default=0.0, min=0.0, max=3600.0))
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, value: int, seconds: float) -> tuple[int]:
        self.ran()
        steps = max(1, round(seconds / SLEEP_STEP))
        start = time.monotonic()
        for step in range(1, steps + 1):
            step_end = start + seconds * step / steps
            while (left := step_end - time.monotonic()) > 0:
                ctx.check_interrupted()
                time.sleep(min(left, 0.01))
            ctx.check_interrupted()
            ctx.progress(step, steps)
        return (value,)


class StubPreview(StubNode):
    """Send one JPEG preview."""

    inputs = (Input("a", INT, socket_only=True),)
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, a: int) -> tuple[int]:
        self.ran()
        ctx.preview("JPEG", jpeg_bytes())
        return (a,)


class StubReadFile(StubNode):
    """Read a text file from the input folder (impure: fingerprinted by size + mtime)."""

    inputs = (Input("name", STRING, default="a.txt"),)
    outputs = (Output(STRING),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: dict[str, Any]) -> str | None:
        stat = Path(folders.file_path("input", inputs["name"])).stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def run(self, ctx: RunContext, name: str) -> tuple[str]:
        self.ran()
        return (ctx.folders.file_path("input", name).read_text(),)


STUB_NODES: tuple[type[StubNode], ...] = (StubInt, StubAdd, StubOptions, StubShow, StubFail, StubSteps, StubGate,
                                          StubSleep, StubPreview, StubReadFile)


def register_stub_nodes(registry: NodeRegistry, controls: Controls) -> None:
    """Add every stub node to ``registry``, each a subclass that reports to ``controls``."""
    for cls in STUB_NODES:
        bound = type(cls.__name__, (cls,), {"controls": controls, "__doc__": cls.__doc__,
                                            "__module__": cls.__module__})
        registry.register(bound)


def register(registry: NodeRegistry) -> None:
    """The ``--extra-nodes`` / Ray worker entry point: the stubs with controls of their own."""
    register_stub_nodes(registry, Controls())


@dataclass
class StubWorld:
    """A registry of the stub nodes alone and its controls (executor, validation and workflow tests)."""

    registry: NodeRegistry
    controls: Controls

    @property
    def calls(self) -> Counter[str]:
        return self.controls.calls


def make_registry() -> StubWorld:
    world = StubWorld(NodeRegistry(), Controls())
    register_stub_nodes(world.registry, world.controls)
    return world


def registry_with_stubs() -> NodeRegistry:
    """The built-in nodes and the stubs, as a cluster front or a stub-aware server knows them."""
    from nodes import register_builtin_nodes

    registry = NodeRegistry()
    register_builtin_nodes(registry)
    register(registry)
    return registry


def jpeg_bytes() -> bytes:
    """A tiny JPEG (4x4, one colour)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(out, format="JPEG")
    return out.getvalue()


def chain(length: int, start: int = 0) -> dict[str, Any]:
    """StubInt -> StubAdd x length -> StubShow, ids 1..length+2."""
    prompt: dict[str, Any] = {"1": {"class_type": "StubInt", "inputs": {"value": start}}}
    for i in range(2, length + 2):
        prompt[str(i)] = {"class_type": "StubAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt[str(length + 2)] = {"class_type": "StubShow", "inputs": {"value": [str(length + 1), 0]}}
    return prompt


def sleep_prompt(value: int, seconds: float) -> dict[str, Any]:
    """StubSleep(value, seconds) -> StubShow: output node "2" shows the value."""
    return {"1": {"class_type": "StubSleep", "inputs": {"value": value, "seconds": seconds}},
            "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}}
