from comfy_api.latest import io, ui


class ImageScale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoomV3ImageScale",
            category="loom test v3/image",
            inputs=[io.Image.Input("image"), io.Float.Input("factor", default=0.5, min=0.0, max=4.0)],
            outputs=[io.Image.Output("image"), io.Int.Output("width")],
        )

    @classmethod
    def execute(cls, image: io.Image.Type, factor: float) -> io.NodeOutput:
        return io.NodeOutput((image * factor).clamp(0.0, 1.0), image.shape[2])


class PreviewScaled(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoomV3PreviewScaled",
            category="loom test v3/image",
            inputs=[io.Image.Input("images")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images):
        return io.NodeOutput(ui=ui.PreviewImage(images, cls=cls))
