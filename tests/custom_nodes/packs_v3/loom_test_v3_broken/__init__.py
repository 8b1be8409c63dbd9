"""A V3 pack whose extension fails to list its nodes: it is reported as failed, the others load."""

from comfy_api.latest import ComfyExtension


class BrokenExtension(ComfyExtension):
    async def get_node_list(self):
        raise RuntimeError("no nodes today")


async def comfy_entrypoint() -> BrokenExtension:
    return BrokenExtension()
