from comfy_api.latest import io, ui


class Widgets(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoomV3Widgets",
            display_name="Widgets (V3 test pack)",
            category="loom test v3/widgets",
            description="Joins its widget values into a text.",
            inputs=[
                io.Int.Input("count", default=2, min=0, max=10, step=1, display_mode=io.NumberDisplay.slider,
                             control_after_generate=True),
                io.Float.Input("scale", default=0.5, min=0.0, max=2.0, step=0.25, round=0.01, tooltip="a factor"),
                io.String.Input("word", default="loom", multiline=False, placeholder="a word"),
                io.Boolean.Input("shout", default=False, label_on="LOUD", label_off="quiet"),
                io.Combo.Input("joiner", options=["-", "+", "_"], default="+"),
                io.String.Input("suffix", optional=True, default="!"),
            ],
            outputs=[io.String.Output("text", display_name="text", tooltip="the joined text")],
        )

    @classmethod
    def execute(cls, count, scale, word, shout, joiner, suffix=""):
        text = joiner.join([word] * count) + f"{joiner}{scale * count:g}{suffix}"
        return io.NodeOutput(text.upper() if shout else text)


class ShowText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoomV3ShowText",
            category="loom test v3/output",
            inputs=[io.String.Input("text", force_input=True)],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, text):
        return io.NodeOutput(ui=ui.PreviewText(text))


class BadSchema(io.ComfyNode):
    """define_schema fails: the node is skipped, the pack's other nodes load."""

    @classmethod
    def define_schema(cls):
        raise ValueError("this schema is broken on purpose")

    @classmethod
    def execute(cls):
        return io.NodeOutput()
