"""SaveAnimatedWEBP / SaveAnimatedPNG (files re-read with PIL), LoadImageOutput, WebcamCapture and
SaveImageWebsocket's events, on real files in temporary folders."""

from __future__ import annotations

import io
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from engine.context import RunContext
from engine.errors import PathOutsideRoot, ValidationFailed
from engine.events import ListSink, Progress, WebsocketImage
from engine.folders import Folders
from engine.registry import NodeRegistry
from engine.validate import validate_prompt
from nodes import register_builtin_nodes
from nodes.image_outputs import (
    LoadImageOutput,
    SaveAnimatedPNG,
    SaveAnimatedWEBP,
    SaveImageWebsocket,
    WebcamCapture,
    output_image_choices,
)

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {}}}
WORKFLOW = {"nodes": [{"id": 1}], "version": 0.4}


def _frames(count: int = 3, height: int = 6, width: int = 5, channels: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(count * 100 + channels)
    return torch.rand(count, height, width, channels, generator=gen)


def _levels(images: torch.Tensor) -> np.ndarray:
    """What an 8-bit encoder must store: each value scaled by 255, clipped and truncated (ComfyUI's conversion)."""
    return np.clip(images.numpy() * 255.0, 0, 255).astype(np.uint8)


def _with_workflow(ctx: RunContext) -> RunContext:
    ctx.prompt = PROMPT
    ctx.extra_pnginfo = {"workflow": WORKFLOW}
    return ctx


def _saved_path(ctx: RunContext, ui: Any, index: int = 0) -> Path:
    entry = ui["images"][index]
    return ctx.folders.output_dir / entry["subfolder"] / entry["filename"]


# --- SaveAnimatedWEBP -------------------------------------------------------------------------


def test_animated_webp_frames_duration_and_lossless_pixels(ctx: RunContext) -> None:
    images = _frames(3)
    out = SaveAnimatedWEBP().run(_with_workflow(ctx), images=images, filename_prefix="anim", fps=4.0,
                                 lossless=True, quality=80, method="default")
    assert out.ui == {"images": [{"filename": "anim_00001_.webp", "subfolder": "", "type": "output"}],
                      "animated": [True]}
    with Image.open(_saved_path(ctx, out.ui)) as picture:
        assert picture.format == "WEBP" and getattr(picture, "n_frames", 1) == 3
        exif = picture.getexif()
        frames = []
        for frame in ImageSequence.Iterator(picture):
            frames.append(np.asarray(frame.convert("RGB")))  # decodes the frame, then info has its duration
            assert frame.info["duration"] == 250
    assert np.array_equal(np.stack(frames), _levels(images))
    assert exif[0x0110] == "prompt:" + json.dumps(PROMPT)
    assert exif[0x010F] == "workflow:" + json.dumps(WORKFLOW)


def test_webp_duration_is_whole_milliseconds_and_lossy_differs(ctx: RunContext) -> None:
    images = _frames(2, 16, 16)
    lossy = SaveAnimatedWEBP().run(ctx, images=images, filename_prefix="lossy", fps=3.0, lossless=False,
                                   quality=10, method="fastest")
    with Image.open(_saved_path(ctx, lossy.ui)) as picture:
        first = np.asarray(picture.convert("RGB"))
        assert getattr(picture, "n_frames", 1) == 2 and picture.info["duration"] == 333  # int(1000 / 3)
        assert 0x0110 not in picture.getexif()  # no prompt, no metadata
    assert not np.array_equal(first, _levels(images)[0])


def test_single_frame_is_not_marked_animated_and_counters_advance(ctx: RunContext) -> None:
    first = SaveAnimatedWEBP().run(ctx, images=_frames(1), filename_prefix="clips/one", fps=6.0, lossless=True,
                                   quality=80, method="slowest")
    second = SaveAnimatedWEBP().run(ctx, images=_frames(1), filename_prefix="clips/one", fps=6.0, lossless=True,
                                    quality=80, method="slowest")
    assert first.ui == {"images": [{"filename": "one_00001_.webp", "subfolder": "clips", "type": "output"}]}
    assert second.ui is not None and second.ui["images"][0]["filename"] == "one_00002_.webp"
    assert (ctx.folders.output_dir / "clips" / "one_00001_.webp").is_file()


def test_prefix_outside_the_output_folder_is_refused(ctx: RunContext) -> None:
    with pytest.raises(PathOutsideRoot, match="filename_prefix"):
        SaveAnimatedWEBP().run(ctx, images=_frames(2), filename_prefix="../escape", fps=6.0, lossless=True,
                               quality=80, method="default")


# --- SaveAnimatedPNG --------------------------------------------------------------------------


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def test_animated_png_frames_duration_pixels_and_metadata(ctx: RunContext) -> None:
    images = _frames(4, channels=4)  # RGBA frames stay RGBA
    out = SaveAnimatedPNG().run(_with_workflow(ctx), images=images, filename_prefix="apng", fps=8.0,
                                compress_level=4)
    assert out.ui == {"images": [{"filename": "apng_00001_.png", "subfolder": "", "type": "output"}],
                      "animated": [True]}
    path = _saved_path(ctx, out.ui)
    with Image.open(path) as picture:
        assert getattr(picture, "n_frames", 1) == 4 and getattr(picture, "is_animated", False)
        frames = []
        for frame in ImageSequence.Iterator(picture):
            frames.append(np.asarray(frame.convert("RGBA")))
            assert frame.info["duration"] == 125
    assert np.array_equal(np.stack(frames), _levels(images))
    kinds = [kind for kind, _ in _chunks(path.read_bytes())]
    assert kinds.count(b"fcTL") == 4 and kinds[-1] == b"IEND"
    comf = [body for kind, body in _chunks(path.read_bytes()) if kind == b"comf"]
    assert comf == [b"prompt\x00" + json.dumps(PROMPT).encode(), b"workflow\x00" + json.dumps(WORKFLOW).encode()]
    assert kinds.index(b"comf") > kinds.index(b"IDAT")  # written after the image data, as ComfyUI does


def test_animated_png_compress_level_changes_the_size(ctx: RunContext) -> None:
    images = torch.linspace(0, 1, 64).reshape(1, 1, 64, 1).expand(2, 64, 64, 3).contiguous()
    sizes = []
    for level in (0, 9):
        out = SaveAnimatedPNG().run(ctx, images=images, filename_prefix=f"level{level}", fps=6.0,
                                    compress_level=level)
        sizes.append(_saved_path(ctx, out.ui).stat().st_size)
    assert sizes[0] > 2 * sizes[1]


# --- LoadImageOutput --------------------------------------------------------------------------


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _registry() -> NodeRegistry:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry


def test_output_choices_are_annotated_newest_first(folders: Folders) -> None:
    _write_png(folders.output_dir / "old.png", np.zeros((2, 2, 3), np.uint8))
    _write_png(folders.output_dir / "sub" / "new.png", np.zeros((2, 2, 3), np.uint8))
    (folders.output_dir / "notes.txt").write_text("not an image")
    past = time.time() - 100
    os.utime(folders.output_dir / "old.png", (past, past))
    assert output_image_choices(folders) == ["sub/new.png [output]", "old.png [output]"]


def test_load_image_output_reads_the_output_folder(ctx: RunContext) -> None:
    pixels = np.array([[[255, 0, 0, 255], [0, 255, 0, 0]]], dtype=np.uint8)
    _write_png(ctx.folders.output_dir / "made.png", pixels)
    image, mask = LoadImageOutput().run(ctx, image="made.png [output]")
    assert image.shape == (1, 1, 2, 3) and mask.tolist() == [[[0.0, 1.0]]]
    assert torch.equal(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(FileNotFoundError, match="output folder"):
        LoadImageOutput().run(ctx, image="missing.png [output]")


def test_load_image_output_validates_names_itself(folders: Folders) -> None:
    _write_png(folders.output_dir / "made.png", np.zeros((2, 2, 3), np.uint8))
    assert LoadImageOutput.validate_inputs(folders, {"image": "made.png [output]"}) is None
    missing = LoadImageOutput.validate_inputs(folders, {"image": "x.png [output]"})
    assert missing is not None and "input 'image'" in missing and "not found in the output folder" in missing
    assert "outside" in str(LoadImageOutput.validate_inputs(folders, {"image": "../x.png [output]"}))
    registry = _registry()
    prompt: dict[str, dict[str, Any]] = {
        "1": {"class_type": "LoadImageOutput", "inputs": {"image": "made.png [output]"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    assert set(validate_prompt(prompt, registry, folders).nodes) == {"1", "2"}
    prompt["1"]["inputs"]["image"] = "gone.png [output]"
    with pytest.raises(ValidationFailed, match="gone.png"):
        validate_prompt(prompt, registry, folders)


def test_load_image_output_fingerprint_follows_the_bytes(folders: Folders) -> None:
    path = folders.output_dir / "made.png"
    _write_png(path, np.zeros((2, 2, 3), np.uint8))
    before = LoadImageOutput.fingerprint(folders, {"image": "made.png [output]"})
    _write_png(path, np.full((2, 2, 3), 9, np.uint8))
    assert LoadImageOutput.fingerprint(folders, {"image": "made.png [output]"}) != before


# --- WebcamCapture ----------------------------------------------------------------------------


def test_webcam_capture_loads_and_resizes(ctx: RunContext) -> None:
    _write_png(ctx.folders.temp_dir / "webcam" / "1.png", np.full((4, 8, 3), 200, np.uint8))
    name = "webcam/1.png [temp]"
    (same,) = WebcamCapture().run(ctx, image=name, width=0, height=0, capture_on_queue=True)
    assert same.shape == (1, 4, 8, 3) and torch.allclose(same, torch.full_like(same, 200 / 255))
    (wide,) = WebcamCapture().run(ctx, image=name, width=6, height=0, capture_on_queue=False)
    assert wide.shape == (1, 4, 6, 3) and torch.allclose(wide, torch.full_like(wide, 200 / 255), atol=1e-6)
    (both,) = WebcamCapture().run(ctx, image=name, width=3, height=2, capture_on_queue=False)
    assert both.shape == (1, 2, 3, 3)


def test_webcam_capture_reruns_on_queue_only_when_asked(folders: Folders) -> None:
    _write_png(folders.input_dir / "cam.png", np.zeros((2, 2, 3), np.uint8))
    fixed = {"image": "cam.png", "capture_on_queue": False}
    assert WebcamCapture.fingerprint(folders, fixed) == WebcamCapture.fingerprint(folders, fixed)
    live = {"image": "cam.png", "capture_on_queue": True}
    assert WebcamCapture.fingerprint(folders, live) != WebcamCapture.fingerprint(folders, live)


def test_webcam_value_is_a_text_widget_in_validation(folders: Folders) -> None:
    _write_png(folders.temp_dir / "webcam" / "2.png", np.zeros((2, 2, 3), np.uint8))
    registry = _registry()
    webcam = {"image": "webcam/2.png [temp]", "width": 0, "height": 0, "capture_on_queue": True}
    prompt: dict[str, dict[str, Any]] = {
        "1": {"class_type": "WebcamCapture", "inputs": webcam},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    assert validate_prompt(prompt, registry, folders).nodes["1"].literals["image"] == "webcam/2.png [temp]"
    prompt["1"]["inputs"]["image"] = "webcam/none.png [temp]"
    with pytest.raises(ValidationFailed, match="none.png"):
        validate_prompt(prompt, registry, folders)


# --- SaveImageWebsocket -----------------------------------------------------------------------


def test_save_image_websocket_sends_each_png_and_writes_nothing(ctx: RunContext) -> None:
    images = _frames(2, 3, 4)
    out = SaveImageWebsocket().run(ctx, images=images)
    assert out.ui is None and out.values == ()
    assert isinstance(ctx.sink, ListSink)
    sent = [e for e in ctx.sink.events if isinstance(e, WebsocketImage)]
    assert [e.image_format for e in sent] == ["PNG", "PNG"] and {e.node for e in sent} == {"1"}
    for event, expected in zip(sent, _levels(images), strict=True):
        with Image.open(io.BytesIO(event.data)) as picture:
            assert picture.format == "PNG" and not getattr(picture, "text", None)  # no metadata
            assert np.array_equal(np.asarray(picture), expected)
    assert [(e.value, e.max) for e in ctx.sink.events if isinstance(e, Progress)] == [(0, 2), (1, 2)]
    assert not any(ctx.folders.output_dir.iterdir()) and not any(ctx.folders.temp_dir.iterdir())
    assert SaveImageWebsocket.always_run
