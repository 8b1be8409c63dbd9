import random
import time

import comfy.model_management
import comfy.utils
import folder_paths
from server import PromptServer


class ShowInfo:
    CATEGORY = "loom test/output"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "dynprompt": "DYNPROMPT"}}

    def show(self, value, unique_id, prompt, dynprompt):
        own = dynprompt.get_node(unique_id)["class_type"]
        text = f"value={value} node={unique_id} class={own} nodes={len(prompt)}"
        return {"ui": {"text": [text]}}


class Countdown:
    """Counts down ``steps`` with ComfyUI's ProgressBar, checking for interrupts between steps."""

    CATEGORY = "loom test/progress"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3, "min": 1, "max": 100000}),
                             "delay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0})}}

    def run(self, steps, delay):
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(delay)
            bar.update(1)
        return (steps,)


class AlwaysNew:
    CATEGORY = "loom test/cache"
    RETURN_TYPES = ("INT",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    @classmethod
    def IS_CHANGED(cls, seed):
        return float("NaN")

    def draw(self, seed):
        return (random.randint(0, 10**9),)


class CheckedValue:
    CATEGORY = "loom test/validation"
    RETURN_TYPES = ("STRING",)
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "ok"}),
                             "ckpt": (folder_paths.get_filename_list("checkpoints"),)}}

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        return True if name != "bad" else "name must not be 'bad'"

    def run(self, name, ckpt):
        return {"ui": {"text": [f"{name}:{ckpt}"]}, "result": (f"{name}:{ckpt}",)}


class WhoAsked:
    """Tells which client's prompt runs it, from PromptServer.instance as packs read it."""

    CATEGORY = "loom test/server"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "tell"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def tell(self):
        server = PromptServer.instance
        return {"ui": {"text": [f"{server.client_id}/{server.last_node_id}"]}}
