class CountTo:
    CATEGORY = "loom test/lists"
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "count"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", {"default": 3, "min": 0, "max": 100})}}

    def count(self, n):
        return (list(range(n)),)


class SumList:
    CATEGORY = "loom test/lists"
    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True
    FUNCTION = "total"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {"forceInput": True})}, "optional": {"bonus": ("INT", {"default": 0})}}

    def total(self, values, bonus=(0,)):
        return (sum(values) + sum(bonus),)


class LazySwitch:
    CATEGORY = "loom test/logic"
    RETURN_TYPES = ("INT",)
    FUNCTION = "pick"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"which": ("BOOLEAN", {"default": True}),
                             "on_true": ("INT", {"lazy": True, "forceInput": True}),
                             "on_false": ("INT", {"lazy": True, "forceInput": True})}}

    def check_lazy_status(self, which, on_true=None, on_false=None):
        needed = "on_true" if which else "on_false"
        return [needed] if (on_true if which else on_false) is None else []

    def pick(self, which, on_true=None, on_false=None):
        return (on_true if which else on_false,)


class Expand:
    """Expands into two ComfyUI nodes (EmptyImage -> ImageInvert) and returns their image."""

    CATEGORY = "loom test/expansion"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "expand"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 8, "min": 1, "max": 64})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def expand(self, size, unique_id):
        graph = {
            f"{unique_id}.empty": {"class_type": "EmptyImage",
                                   "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0}},
            f"{unique_id}.invert": {"class_type": "ImageInvert", "inputs": {"image": [f"{unique_id}.empty", 0]}},
        }
        return {"result": ([f"{unique_id}.invert", 0],), "expand": graph}
