"""Stub nodes for server-level tests, loadable by a real server with ``--extra-nodes tests.stub_nodes``."""

from __future__ import annotations

import time
from typing import Any

from engine.context import RunContext
from engine.node import Input, Node, NodeOutput, Output
from engine.registry import NodeRegistry
from engine.types import ANY, FLOAT, INT


class StubSleep(Node):
    """Wait ``seconds`` (checking for interrupts every 10 ms), then pass ``value`` on."""

    category = "testing"
    inputs = (Input("value", INT, default=0), Input("seconds", FLOAT, default=0.0, min=0.0, max=3600.0))
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, value: int, seconds: float) -> tuple[int]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ctx.check_interrupted()
            time.sleep(0.01)
        return (value,)


class StubShow(Node):
    """Show a value in the UI (an output node)."""

    category = "testing"
    inputs = (Input("value", ANY),)
    output_node = True

    def run(self, ctx: RunContext, value: Any) -> NodeOutput:
        return NodeOutput(ui={"value": [value]})


def register(registry: NodeRegistry) -> None:
    for cls in (StubSleep, StubShow):
        registry.register(cls)
