"""``nodes``: ComfyUI's core node module as custom node packs use it.

* ``MAX_RESOLUTION``;
* the core node classes by name (``from nodes import KSampler, VAEDecode``), ComfyUI-style classes over Loom's
  nodes: ``INPUT_TYPES()``, ``RETURN_TYPES`` and the function ComfyUI names (``KSampler().sample(...)``,
  ``VAEDecode().decode(...)``, ...; any node also answers ``execute``), which run Loom's node inside the custom
  node that calls it (its prompt, progress, interrupt and models);
* ``SaveImage`` and ``PreviewImage`` written out, because packs subclass them and set ``output_dir``, ``type``,
  ``prefix_append`` and ``compress_level`` before calling ``save_images``;
* ``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS`` over every registered node, packs' included.
"""

from __future__ import annotations

import random
import string
import threading
from pathlib import Path
from typing import Any

from engine.context import RunContext
from engine.custom_nodes.runtime import active, current_run
from engine.events import ListSink
from engine.node import Node, NodeOutput

MAX_RESOLUTION = 16384

#: The function name of ComfyUI's core node classes (facts of its interface); others answer ``execute``.
FUNCTIONS: dict[str, str] = {
    "KSampler": "sample", "KSamplerAdvanced": "sample", "CheckpointLoaderSimple": "load_checkpoint",
    "CLIPTextEncode": "encode", "VAEDecode": "decode", "VAEEncode": "encode", "VAEDecodeTiled": "decode",
    "VAEEncodeTiled": "encode", "VAEEncodeForInpaint": "encode", "EmptyLatentImage": "generate",
    "LoraLoader": "load_lora", "LoraLoaderModelOnly": "load_lora_model_only", "LoadImage": "load_image",
    "LoadImageMask": "load_image", "ImageScale": "upscale", "ImageScaleBy": "upscale", "LatentUpscale": "upscale",
    "LatentUpscaleBy": "upscale", "ControlNetLoader": "load_controlnet", "ControlNetApply": "apply_controlnet",
    "ControlNetApplyAdvanced": "apply_controlnet", "VAELoader": "load_vae", "CLIPSetLastLayer": "set_last_layer",
    "ConditioningCombine": "combine", "ConditioningSetArea": "append", "ImageInvert": "invert",
    "ImageBatch": "batch", "UpscaleModelLoader": "load_model", "ImageUpscaleWithModel": "upscale",
    "EmptyImage": "generate", "SetLatentNoiseMask": "set_mask", "ImagePadForOutpaint": "expand_image",
    "CLIPTextEncodeSDXL": "encode", "ConditioningZeroOut": "zero_out", "RepeatLatentBatch": "repeat",
    "LatentFromBatch": "frombatch", "ImageCrop": "crop", "UNETLoader": "load_unet", "CLIPLoader": "load_clip",
    "DualCLIPLoader": "load_clip", "CLIPVisionEncode": "encode", "CLIPVisionLoader": "load_clip",
    "LatentComposite": "composite", "ConditioningAverage": "addWeighted", "ConditioningSetMask": "append",
}
_LOCK = threading.Lock()


def _context() -> RunContext:
    """The running custom node's context, or a standalone one (no prompt) for calls outside a prompt."""
    ctx = current_run()
    if ctx is not None:
        return ctx
    return RunContext(node_id="", prompt_id="", folders=active().folders, sink=ListSink(),
                      interrupt=threading.Event())


def _as_comfy_result(result: tuple[Any, ...] | NodeOutput) -> Any:
    if isinstance(result, NodeOutput):
        return {"ui": dict(result.ui), "result": tuple(result.values)} if result.ui else tuple(result.values)
    return result


def comfy_class(node_cls: type[Node]) -> type:
    """A ComfyUI-style class running Loom's ``node_cls``."""
    function = FUNCTIONS.get(node_cls.type_name, "execute")

    def call(self: Any, *args: Any, **inputs: Any) -> Any:
        """Positional arguments fill the inputs in their declared order, as ComfyUI's functions take them."""
        inputs.update(zip((spec.name for spec in node_cls.inputs), args, strict=False))
        return _as_comfy_result(node_cls().run(_context(), **inputs))

    def input_types(cls: type) -> dict[str, Any]:
        return dict(active().registry.node_info(node_cls, active().folders)["input"])

    attrs: dict[str, Any] = {
        "INPUT_TYPES": classmethod(input_types), "RETURN_TYPES": tuple(o.type for o in node_cls.outputs),
        "RETURN_NAMES": tuple(o.label for o in node_cls.outputs), "FUNCTION": function,
        "OUTPUT_NODE": node_cls.output_node, "CATEGORY": node_cls.category,
        "OUTPUT_IS_LIST": tuple(o.is_list for o in node_cls.outputs), "DESCRIPTION": node_cls.description,
        "loom_node": node_cls, function: call, "execute": call,
    }
    return type(node_cls.type_name, (), attrs)


def _core_class(name: str) -> type | None:
    """The ComfyUI-style class of Loom's node ``name`` (made once per runtime), or None."""
    runtime = active()
    made = runtime.core_classes.get(name)
    if made is None:
        node_cls = runtime.registry.get(name)
        if node_cls is None:
            return None
        made = runtime.core_classes.setdefault(name, comfy_class(node_cls))
    return made


class SaveImage:
    """ComfyUI's SaveImage: PNGs with the prompt and workflow, counted names, into ``output_dir``."""

    RETURN_TYPES: tuple[str, ...] = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your output directory."

    def __init__(self) -> None:
        self.output_dir = str(active().folders.output_dir)
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images: Any, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: Any = None) -> dict[str, Any]:
        from engine.custom_nodes.compat import folder_paths
        from engine.sdk.files import png_bytes

        filename_prefix += self.prefix_append
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            data = png_bytes(image, prompt, extra_pnginfo, self.compress_level)
            with _LOCK:
                Path(folder, name).write_bytes(data)
            results.append({"filename": name, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    """ComfyUI's PreviewImage: SaveImage into the temp folder, fast compression, no metadata kept."""

    DESCRIPTION = "Saves the input images to the temp folder for previews."

    def __init__(self) -> None:
        super().__init__()
        self.output_dir = str(active().folders.temp_dir)
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


_WRITTEN: dict[str, type] = {"SaveImage": SaveImage, "PreviewImage": PreviewImage}


def _mappings() -> dict[str, type]:
    registry = active().registry
    out: dict[str, type] = {}
    for name in registry.names():
        comfy = getattr(registry.get(name), "comfy_class", None)  # a pack's node: its own class, as ComfyUI lists it
        found = comfy or _WRITTEN.get(name) or _core_class(name)
        if found is not None:
            out[name] = found
    return out


def __getattr__(name: str) -> Any:
    """Core node classes and the mappings, made from the registry when first asked for (PEP 562)."""
    if name == "NODE_CLASS_MAPPINGS":
        return _mappings()
    if name == "NODE_DISPLAY_NAME_MAPPINGS":
        registry = active().registry
        return {n: cls.display_name or n for n in registry.names() if (cls := registry.get(n)) is not None}
    if not name.startswith("_"):
        found = _WRITTEN.get(name) or _core_class(name)
        if found is not None:
            return found
    loom = globals().get("loom_package")  # Loom's own nodes package, whose place this module took
    if loom is not None and hasattr(loom, name):
        return getattr(loom, name)
    raise AttributeError(f"module 'nodes' has no attribute {name!r} (Loom provides MAX_RESOLUTION, "
                         "NODE_CLASS_MAPPINGS and its registered nodes by name)")
