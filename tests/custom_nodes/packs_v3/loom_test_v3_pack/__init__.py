"""A ComfyUI V3 custom node pack written the way V3 packs are written, for Loom's tests: an async
comfy_entrypoint returning a ComfyExtension whose nodes declare themselves with io.Schema."""

from comfy_api.latest import ComfyExtension, io

from .image_nodes import ImageScale, PreviewScaled
from .logic_nodes import AsyncAdd, Checked, CountTo, LazyPick
from .text_nodes import BadSchema, ShowText, Widgets


class LoomTestV3Extension(ComfyExtension):
    loaded = False

    async def on_load(self) -> None:
        LoomTestV3Extension.loaded = True

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        assert LoomTestV3Extension.loaded, "on_load runs before get_node_list"
        return [Widgets, ShowText, LazyPick, ImageScale, PreviewScaled, AsyncAdd, CountTo, Checked, BadSchema]


async def comfy_entrypoint() -> LoomTestV3Extension:
    return LoomTestV3Extension()
