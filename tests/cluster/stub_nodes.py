"""Stub nodes for the cluster tests and bench/cluster.py; Ray workers import this module
(``tests.cluster.stub_nodes:register``)."""

from __future__ import annotations

import os
import time
from typing import Any

from engine.context import RunContext
from engine.node import Input, Node, NodeOutput, Output
from engine.registry import NodeRegistry
from engine.types import FLOAT, INT
from nodes import register_builtin_nodes


class ClusterSleep(Node):
    """Sleep ``seconds`` (interruptible), reporting progress, then pass ``value`` on."""

    category = "stub"
    inputs = (Input("value", INT, default=0, min=-(10**9), max=10**9),
              Input("seconds", FLOAT, default=1.0, min=0.0, max=600.0))
    outputs = (Output(INT),)

    def run(self, ctx: RunContext, value: int, seconds: float) -> tuple[int]:
        steps = max(1, round(seconds / 0.05))
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            ctx.check_interrupted()
            ctx.progress(step, steps)
        return (value,)


class ClusterShow(Node):
    """Show a value, and the process that computed it."""

    category = "stub"
    output_node = True
    inputs = (Input("value", INT, socket_only=True),)

    def run(self, ctx: RunContext, value: int) -> NodeOutput:
        return NodeOutput(ui={"text": [str(value)], "pid": [os.getpid()]})


def register(registry: NodeRegistry) -> None:
    for cls in (ClusterSleep, ClusterShow):
        registry.register(cls)


def registry_with_stubs() -> NodeRegistry:
    """The built-in nodes and these, as the front of the cluster tests knows them."""
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    register(registry)
    return registry


def sleep_prompt(value: int, seconds: float) -> dict[str, Any]:
    """ClusterSleep(value, seconds) -> ClusterShow: output node "2" shows the value."""
    return {"1": {"class_type": "ClusterSleep", "inputs": {"value": value, "seconds": seconds}},
            "2": {"class_type": "ClusterShow", "inputs": {"value": ["1", 0]}}}
