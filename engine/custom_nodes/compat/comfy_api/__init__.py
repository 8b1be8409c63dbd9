"""``comfy_api``: ComfyUI's versioned node API for custom node packs (the V3 interface).

Loom provides :mod:`.latest` (also reachable as ``comfy_api.v0_0_2``): ``ComfyExtension``, ``io`` and ``ui``,
written from ComfyUI's interface, not its code. The V3 node classes a pack's ``comfy_entrypoint`` lists are
adapted into Loom nodes by :mod:`engine.custom_nodes.v3`.
"""
