import asyncio
import random

from comfy_api.latest import io


class LazyPick(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoomV3LazyPick",
            category="loom test v3/logic",
            inputs=[
                io.Boolean.Input("which", default=True),
                io.Int.Input("on_true", lazy=True, force_input=True),
                io.Int.Input("on_false", lazy=True, force_input=True),
            ],
            outputs=[io.Int.Output()],
        )

    @classmethod
    def check_lazy_status(cls, which, on_true=None, on_false=None):
        needed = "on_true" if which else "on_false"
        return [needed] if (on_true if which else on_false) is None else []

    @classmethod
    def execute(cls, which, on_true=None, on_false=None):
        return io.NodeOutput(on_true if which else on_false)


class AsyncAdd(io.ComfyNode):
    """Async execute, reading its own node id from the hidden values."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoomV3AsyncAdd",
            category="loom test v3/logic",
            inputs=[io.Int.Input("a", default=0), io.Int.Input("b", default=0)],
            outputs=[io.Int.Output("sum"), io.String.Output("text")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    async def execute(cls, a, b):
        await asyncio.sleep(0)
        total = a + b
        return io.NodeOutput(total, f"node={cls.hidden.unique_id} sum={total}")


class CountTo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoomV3CountTo",
            category="loom test v3/lists",
            inputs=[io.Int.Input("n", default=3, min=0, max=100)],
            outputs=[io.Int.Output("numbers", is_output_list=True)],
        )

    @classmethod
    def execute(cls, n):
        return io.NodeOutput(list(range(n)))


class Checked(io.ComfyNode):
    """validate_inputs refuses one name; fingerprint_inputs says NaN, so it never comes from the cache."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoomV3Checked",
            category="loom test v3/validation",
            inputs=[io.String.Input("name", default="ok")],
            outputs=[io.String.Output()],
        )

    @classmethod
    def validate_inputs(cls, name):
        return True if name != "bad" else "name must not be 'bad'"

    @classmethod
    def fingerprint_inputs(cls, name):
        return float("nan")

    @classmethod
    def execute(cls, name):
        return io.NodeOutput(f"{name}:{random.randint(0, 10**9)}")
