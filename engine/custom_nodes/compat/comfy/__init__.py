"""``comfy``: ComfyUI's package of engine modules. Loom provides the submodules packs import most
(:mod:`.utils`, :mod:`.model_management`, :mod:`.samplers`); others raise ImportError naming them."""
