"""A pack that needs a ComfyUI module Loom does not provide: it fails to load, the others load."""
from comfy.controlnet import load_controlnet  # noqa: F401

NODE_CLASS_MAPPINGS = {}
