"""engine.images: decoding within pixel limits, PNG metadata, frames and arrays, masks, without torch."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine import images
from engine.pngmeta import read_png_metadata
from tests.api.conftest import png_bytes


def test_decode_refuses_non_images_and_too_many_pixels() -> None:
    with pytest.raises(images.ImageError, match="could not be decoded"):
        images.decode_image(b"not an image", 1000)
    with pytest.raises(images.ImageTooLarge, match="100x100 = 10000 pixels; the limit is 9999"):
        images.decode_image(png_bytes((100, 100)), 9999, "upload")
    assert images.decode_image(png_bytes((100, 100)), 10_000).size == (100, 100)


def test_encode_png_carries_the_workflow_and_text() -> None:
    picture = images.array_to_image(np.full((4, 6, 3), 0.5, dtype=np.float32))
    assert picture.size == (6, 4) and picture.getpixel((0, 0)) == (127, 127, 127)  # 127.5 truncated
    data = images.encode_png(picture, prompt={"1": {"class_type": "X"}}, extra_pnginfo={"workflow": {"nodes": []}},
                             text={"note": "hello"})
    assert read_png_metadata(data) == {"prompt": {"1": {"class_type": "X"}}, "workflow": {"nodes": []}}
    assert images.text_chunks(images.decode_image(data, 100))["note"] == "hello"


def test_8bit_conversion_clips_then_truncates_as_comfyui() -> None:
    eps = 1e-6
    values = np.array([0.0, 0.999, 0.5, 1 / 255 - eps, 1 / 255, 2 / 255 - eps, -0.3, 1.0, 1.7, np.nan, np.inf,
                       -np.inf], dtype=np.float32)
    assert images.to_8bit(values).tolist() == [0, 254, 127, 0, 1, 1, 0, 255, 255, 0, 255, 0]
    comfyui = np.clip(255.0 * values[:9], 0, 255).astype(np.uint8)  # ComfyUI's SaveImage, finite values
    assert images.to_8bit(values[:9]).tolist() == comfyui.tolist()
    assert images.to_8bit(values).dtype == np.uint8
    picture = images.array_to_image(np.array([[[0.999, 0.5, 1.2, 0.25]]], dtype=np.float32))
    assert picture.mode == "RGBA" and picture.getpixel((0, 0)) == (254, 127, 255, 63)


def test_frames_of_an_animation_and_their_pixel_limit() -> None:
    out = io.BytesIO()
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    read = images.read_frames(out.getvalue(), 32)
    assert len(read) == 2 and read[0][0].shape == (4, 4, 3) and read[0][1] is None
    assert read[0][0][0, 0].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(images.ImageTooLarge, match="over its frames"):
        images.read_frames(out.getvalue(), 31)


def test_mask_alpha_goes_into_the_original_and_channels_select() -> None:
    original = images.decode_image(png_bytes((8, 8), (10, 20, 30, 255), text={"workflow": "{}"}), 100)
    mask = images.decode_image(png_bytes((4, 4), (0, 0, 0, 64)), 100)
    masked = images.decode_image(images.with_mask_alpha(original, mask), 100)
    assert masked.getpixel((0, 0)) == (10, 20, 30, 64) and images.text_chunks(masked) == {"workflow": "{}"}
    assert images.select_channel(masked, "rgb").mode == "RGB"
    assert images.select_channel(masked, "a").getpixel((0, 0)) == (0, 0, 0, 64)
    assert Image.open(io.BytesIO(images.encode(masked, "jpeg", 80))).format == "JPEG"
    with pytest.raises(ValueError, match="cannot encode"):
        images.encode(masked, "tiff")
