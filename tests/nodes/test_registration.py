"""Every built-in node registers cleanly and its /object_info entry matches ComfyUI's contract."""

from __future__ import annotations

import json

from engine.folders import Folders
from engine.registry import NodeRegistry
from nodes import register_builtin_nodes

EXPECTED_NODES = {
    "LoadImage", "LoadImageMask", "SaveImage", "PreviewImage",
    "ImageScale", "ImageScaleBy", "ImageInvert", "ImageBatch", "EmptyImage",
    "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "LatentComposite", "LatentBatch",
    "LatentFromBatch", "RepeatLatentBatch", "LatentAdd", "LatentMultiply",
    "SaveLatent", "LoadLatent",
}


def _registry() -> NodeRegistry:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry


def test_all_nodes_register_and_object_info_is_json(folders: Folders) -> None:
    registry = _registry()
    assert EXPECTED_NODES <= set(registry.names())
    info = json.loads(json.dumps(registry.object_info(folders)))
    assert set(info) == set(registry.names())
    # A second registry gets its own registrations: nothing is global.
    assert set(_registry().names()) == set(registry.names())


def test_widget_order_and_limits_match_comfyui(folders: Folders) -> None:
    info = _registry().object_info(folders)
    assert info["ImageScale"]["input_order"]["required"] == [
        "image", "upscale_method", "width", "height", "crop"
    ]
    assert info["ImageScale"]["input"]["required"]["upscale_method"][0] == [
        "nearest-exact", "bilinear", "area", "bicubic", "lanczos"
    ]
    assert info["LatentUpscale"]["input"]["required"]["upscale_method"][0][-1] == "bislerp"
    assert info["EmptyLatentImage"]["input"]["required"]["width"] == [
        "INT", {"default": 512, "min": 16, "max": 16384, "step": 8}
    ]
    assert info["LatentUpscaleBy"]["input"]["required"]["scale_by"][1]["default"] == 1.5
    assert info["LatentComposite"]["input_order"]["required"] == [
        "samples_to", "samples_from", "x", "y", "feather"
    ]
    assert info["LoadImage"]["output"] == ["IMAGE", "MASK"]
    assert info["LoadImage"]["input"]["required"]["image"][1]["image_upload"] is True
    assert info["LoadImageMask"]["input"]["required"]["channel"][0] == ["alpha", "red", "green", "blue"]
    assert info["SaveImage"]["output_node"] is True
    assert info["SaveImage"]["output"] == []
    assert info["SaveImage"]["input"]["required"]["filename_prefix"][1]["default"] == "Loom"
    assert info["EmptyImage"]["input"]["required"]["color"][1]["display"] == "color"
    assert info["LatentFromBatch"]["category"] == "latent/batch"


def test_load_image_choices_follow_the_input_folder(folders: Folders) -> None:
    registry = _registry()
    (folders.input_dir / "b.png").write_bytes(b"x")
    (folders.input_dir / "a.JPG").write_bytes(b"x")
    (folders.input_dir / "notes.txt").write_bytes(b"x")
    choices = registry.object_info(folders)["LoadImage"]["input"]["required"]["image"][0]
    assert choices == ["a.JPG", "b.png"]
    (folders.input_dir / "c.webp").write_bytes(b"x")
    choices = registry.object_info(folders)["LoadImage"]["input"]["required"]["image"][0]
    assert choices == ["a.JPG", "b.png", "c.webp"]
