"""LoadImage, LoadImageMask, SaveImage and PreviewImage against real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.context import RunContext
from engine.errors import PathOutsideRoot
from engine.folders import Folders
from engine.pngmeta import read_png_metadata
from nodes.image_io import LoadImage, LoadImageMask, PreviewImage, SaveImage

PROMPT = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Loom", "images": ["8", 0]}}}
WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 9, "type": "SaveImage"}], "version": 0.4}


def _rgba_pixels() -> np.ndarray:
    """A 3x2 (w x h) RGBA image with distinct values everywhere."""
    return np.array(
        [
            [[255, 0, 0, 255], [0, 255, 0, 128], [0, 0, 255, 0]],
            [[10, 20, 30, 40], [200, 100, 50, 255], [1, 2, 3, 4]],
        ],
        dtype=np.uint8,
    )


def _write_rgba(folders: Folders, name: str = "rgba.png") -> np.ndarray:
    pixels = _rgba_pixels()
    Image.fromarray(pixels, "RGBA").save(folders.input_dir / name)
    return pixels


# --- LoadImage ----------------------------------------------------------------------------


def test_load_rgba_png_values_and_mask(ctx: RunContext) -> None:
    pixels = _write_rgba(ctx.folders)
    image, mask = LoadImage().run(ctx, image="rgba.png")
    assert image.shape == (1, 2, 3, 3) and image.dtype == torch.float32
    assert mask.shape == (1, 2, 3) and mask.dtype == torch.float32
    expected_rgb = torch.from_numpy(pixels[..., :3].astype(np.float32) / 255.0)
    torch.testing.assert_close(image[0], expected_rgb)
    expected_mask = 1.0 - torch.from_numpy(pixels[..., 3].astype(np.float32) / 255.0)
    torch.testing.assert_close(mask[0], expected_mask)
    assert mask[0, 0, 0] == 0.0 and mask[0, 0, 2] == 1.0


def test_load_rgb_jpeg_has_zero_mask_of_image_size(ctx: RunContext) -> None:
    Image.new("RGB", (40, 24), (200, 100, 0)).save(ctx.folders.input_dir / "photo.jpg", quality=95)
    image, mask = LoadImage().run(ctx, image="photo.jpg")
    assert image.shape == (1, 24, 40, 3)
    assert mask.shape == (1, 24, 40)
    assert torch.count_nonzero(mask) == 0
    assert abs(image[0, 12, 20, 0].item() - 200 / 255) < 3 / 255


def test_load_exif_orientation_is_applied(ctx: RunContext) -> None:
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 5, 10))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(ctx.folders.input_dir / "rotated.jpg", exif=exif, quality=95)
    image, _ = LoadImage().run(ctx, image="rotated.jpg")
    assert image.shape == (1, 30, 10, 3)  # portrait after transposing
    assert image[0, 2, 5].mean() > 0.9  # the strip is now at the top
    assert image[0, 27, 5].mean() < 0.1


def test_load_gif_frames_become_a_batch(ctx: RunContext) -> None:
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(ctx.folders.input_dir / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    image, mask = LoadImage().run(ctx, image="anim.gif")
    assert image.shape == (2, 6, 8, 3)
    assert mask.shape == (2, 6, 8)
    torch.testing.assert_close(image[0, 3, 4], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(image[1, 3, 4], torch.tensor([0.0, 0.0, 1.0]))


def test_load_sixteen_bit_greyscale_keeps_its_range(ctx: RunContext) -> None:
    grey = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(ctx.folders.input_dir / "deep.png")
    image, _ = LoadImage().run(ctx, image="deep.png")
    torch.testing.assert_close(image[0, 0, :, 0], torch.tensor([0.0, 32768 / 65535, 1.0]))
    torch.testing.assert_close(image[0, 0, :, 0], image[0, 0, :, 2])


def test_load_from_subfolder_and_annotated_name(ctx: RunContext) -> None:
    (ctx.folders.input_dir / "sub").mkdir()
    Image.new("RGB", (2, 2), (255, 255, 255)).save(ctx.folders.input_dir / "sub" / "w.png")
    Image.new("RGB", (3, 3), (0, 0, 0)).save(ctx.folders.output_dir / "made.png")
    image, _ = LoadImage().run(ctx, image="sub/w.png")
    assert image.shape == (1, 2, 2, 3) and image.min() == 1.0
    image, _ = LoadImage().run(ctx, image="made.png [output]")
    assert image.shape == (1, 3, 3, 3) and image.max() == 0.0


def test_fingerprint_follows_file_content(folders: Folders) -> None:
    path = folders.input_dir / "f.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    first = LoadImage.fingerprint(folders, {"image": "f.png"})
    assert first == LoadImage.fingerprint(folders, {"image": "f.png"})
    Image.new("RGB", (4, 4), (1, 2, 4)).save(path)
    second = LoadImage.fingerprint(folders, {"image": "f.png"})
    assert second != first
    assert LoadImageMask.fingerprint(folders, {"image": "f.png", "channel": "red"}) == second
    assert LoadImage.fingerprint(folders, {"image": "missing.png"}) not in (first, second)


def test_missing_file_names_file_and_folder(ctx: RunContext) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png") as info:
        LoadImage().run(ctx, image="nope.png")
    assert str(ctx.folders.input_dir) in str(info.value)


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "sub/../../secret.png"])
def test_path_escape_is_refused(ctx: RunContext, tmp_path: Path, name: str) -> None:
    Image.new("RGB", (2, 2)).save(tmp_path / "secret.png")
    with pytest.raises(PathOutsideRoot, match="input folder"):
        LoadImage().run(ctx, image=name)
    with pytest.raises(PathOutsideRoot):
        LoadImageMask().run(ctx, image=name, channel="red")


def test_symlink_out_of_input_is_refused(ctx: RunContext, tmp_path: Path) -> None:
    Image.new("RGB", (2, 2)).save(tmp_path / "secret.png")
    (ctx.folders.input_dir / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(PathOutsideRoot):
        LoadImage().run(ctx, image="link.png")


def test_corrupt_file_error_names_the_file(ctx: RunContext) -> None:
    (ctx.folders.input_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="broken.png"):
        LoadImage().run(ctx, image="broken.png")


# --- LoadImageMask --------------------------------------------------------------------------


@pytest.mark.parametrize("channel,column", [("red", 0), ("green", 1), ("blue", 2)])
def test_load_mask_colour_channel(ctx: RunContext, channel: str, column: int) -> None:
    pixels = _write_rgba(ctx.folders)
    (mask,) = LoadImageMask().run(ctx, image="rgba.png", channel=channel)
    assert mask.shape == (1, 2, 3)
    torch.testing.assert_close(mask[0], torch.from_numpy(pixels[..., column].astype(np.float32) / 255.0))


def test_load_mask_alpha_is_inverted(ctx: RunContext) -> None:
    pixels = _write_rgba(ctx.folders)
    (mask,) = LoadImageMask().run(ctx, image="rgba.png", channel="alpha")
    torch.testing.assert_close(mask[0], torch.from_numpy(1.0 - pixels[..., 3].astype(np.float32) / 255.0))


def test_load_mask_alpha_without_alpha_is_zeros(ctx: RunContext) -> None:
    Image.new("RGB", (5, 7), (9, 9, 9)).save(ctx.folders.input_dir / "flat.png")
    (mask,) = LoadImageMask().run(ctx, image="flat.png", channel="alpha")
    assert mask.shape == (1, 7, 5)
    assert torch.count_nonzero(mask) == 0


# --- SaveImage / PreviewImage ---------------------------------------------------------------


def _images(batch: int = 1, height: int = 4, width: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand((batch, height, width, 3), generator=gen)


def test_save_image_names_counters_and_pixels(ctx: RunContext) -> None:
    images = _images(batch=2)
    first = SaveImage().run(ctx, images=images, filename_prefix="Loom")
    assert first.values == ()
    assert first.ui == {
        "images": [
            {"filename": "Loom_00001_.png", "subfolder": "", "type": "output"},
            {"filename": "Loom_00002_.png", "subfolder": "", "type": "output"},
        ]
    }
    second = SaveImage().run(ctx, images=images[:1], filename_prefix="Loom")
    assert second.ui["images"][0]["filename"] == "Loom_00003_.png"
    with Image.open(ctx.folders.output_dir / "Loom_00002_.png") as img:
        saved = np.asarray(img)
    expected = np.clip(images[1].numpy() * 255.0, 0, 255).astype(np.uint8)  # ComfyUI's truncation
    np.testing.assert_array_equal(saved, expected)


def test_save_image_runs_twice_give_consecutive_files(ctx: RunContext) -> None:
    for _ in range(2):
        SaveImage().run(ctx, images=_images(), filename_prefix="run")
    assert sorted(p.name for p in ctx.folders.output_dir.iterdir()) == ["run_00001_.png", "run_00002_.png"]


def test_save_image_counter_continues_after_highest_existing(ctx: RunContext) -> None:
    (ctx.folders.output_dir / "cat_00041_.png").write_bytes(b"old")
    (ctx.folders.output_dir / "cat_00007_.webp").write_bytes(b"old")
    (ctx.folders.output_dir / "catalog_00099_.png").write_bytes(b"other prefix")
    out = SaveImage().run(ctx, images=_images(), filename_prefix="cat")
    assert out.ui["images"][0]["filename"] == "cat_00042_.png"
    assert (ctx.folders.output_dir / "cat_00041_.png").read_bytes() == b"old"


def test_save_image_subfolder_prefix(ctx: RunContext) -> None:
    out = SaveImage().run(ctx, images=_images(), filename_prefix="portraits/cat")
    assert out.ui["images"] == [{"filename": "cat_00001_.png", "subfolder": "portraits", "type": "output"}]
    assert (ctx.folders.output_dir / "portraits" / "cat_00001_.png").is_file()


@pytest.mark.parametrize("prefix", ["../x", "a/../../x", "/tmp/x"])
def test_save_image_refuses_escapes(ctx: RunContext, tmp_path: Path, prefix: str) -> None:
    before = set(tmp_path.rglob("*"))
    with pytest.raises(PathOutsideRoot, match="output folder"):
        SaveImage().run(ctx, images=_images(), filename_prefix=prefix)
    assert set(tmp_path.rglob("*")) == before


def test_save_image_batch_num(ctx: RunContext) -> None:
    out = SaveImage().run(ctx, images=_images(batch=2), filename_prefix="b_%batch_num%")
    assert [e["filename"] for e in out.ui["images"]] == ["b_0_00001_.png", "b_1_00002_.png"]
    again = SaveImage().run(ctx, images=_images(batch=1), filename_prefix="b_%batch_num%")
    assert again.ui["images"][0]["filename"] == "b_0_00003_.png"


def test_save_image_embeds_prompt_and_workflow(ctx: RunContext) -> None:
    ctx.prompt = PROMPT
    ctx.extra_pnginfo = {"workflow": WORKFLOW}
    out = SaveImage().run(ctx, images=_images(), filename_prefix="meta")
    data = (ctx.folders.output_dir / out.ui["images"][0]["filename"]).read_bytes()
    assert read_png_metadata(data) == {"prompt": PROMPT, "workflow": WORKFLOW}


def test_save_image_without_prompt_has_no_metadata(ctx: RunContext) -> None:
    out = SaveImage().run(ctx, images=_images(), filename_prefix="plain")
    data = (ctx.folders.output_dir / out.ui["images"][0]["filename"]).read_bytes()
    assert read_png_metadata(data) == {}


def test_saved_image_loads_back_exactly(ctx: RunContext) -> None:
    levels = torch.arange(256, dtype=torch.float32) / 255.0
    images = levels.reshape(1, 16, 16, 1).expand(1, 16, 16, 3).contiguous()
    SaveImage().run(ctx, images=images, filename_prefix="levels")
    (ctx.folders.output_dir / "levels_00001_.png").rename(ctx.folders.input_dir / "levels.png")
    loaded, _ = LoadImage().run(ctx, image="levels.png")
    torch.testing.assert_close(loaded, images)


def test_preview_image_goes_to_temp(ctx: RunContext) -> None:
    out = PreviewImage().run(ctx, images=_images(batch=2))
    entries = out.ui["images"]
    assert [e["type"] for e in entries] == ["temp", "temp"]
    assert all(e["filename"].startswith("LoomPreview_") and e["subfolder"] == "" for e in entries)
    for entry in entries:
        assert (ctx.folders.temp_dir / entry["filename"]).is_file()
    assert not any(ctx.folders.output_dir.iterdir())
