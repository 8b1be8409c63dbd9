"""Image encode and decode without torch, shared by the API and the image nodes.

Decoding bounds memory before any pixel is read: the header's width x height is checked against a
pixel limit (413-worthy :class:`ImageTooLarge`), anything PIL cannot read is an :class:`ImageError`.
Arrays are numpy float32 in 0..1, ``[H, W, C]`` (IMAGE items) and ``[H, W]`` (masks); nodes turn
them into tensors. PNGs are written with the workflow text chunks of :mod:`engine.pngmeta`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin, UnidentifiedImageError

from engine.pngmeta import animated_png_info, png_text_info, webp_exif_entries

#: Re-encodings /view offers (``preview=webp;90``), with their content types.
PREVIEW_FORMATS: dict[str, str] = {"webp": "image/webp", "jpeg": "image/jpeg"}

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError)


class ImageError(ValueError):
    """Bytes or a file that cannot be read as an image; the message says which and why."""


class ImageTooLarge(ImageError):
    """An image with more pixels than the limit it was read under."""


# --------------------------------------------------------------------------- decoding


def _check_pixels(image: Image.Image, max_pixels: int, what: str) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"the {what} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")


@contextmanager
def _decoding(what: str, verb: str) -> Iterator[None]:
    """PIL's errors while reading ``what`` as ImageTooLarge (a decompression bomb) or ImageError."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the {what} is too large: {exc}") from exc
    except ImageTooLarge:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageError(f"the {what} could not be {verb} as an image: {exc}") from exc


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """Fully decode an image (its first frame) from bytes; ImageTooLarge before decoding a big one."""
    with _decoding(what, "decoded"):
        image = Image.open(io.BytesIO(data))
        _check_pixels(image, max_pixels, what)
        image.load()
        return image


def _frames(image: Image.Image) -> Iterator[Image.Image]:
    """The frames of an image; MPO (phone JPEGs with a depth/stereo frame) counts as one."""
    if image.format == "MPO":
        yield image
        return
    yield from ImageSequence.Iterator(image)


def has_alpha(frame: Image.Image) -> bool:
    return "A" in frame.getbands() or "transparency" in frame.info


def frame_to_arrays(frame: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rgb [H, W, 3], alpha [H, W] or None)`` as float32 in 0..1, EXIF orientation applied."""
    frame = ImageOps.exif_transpose(frame)
    if frame.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(frame, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1), None
    if has_alpha(frame):
        rgba = np.asarray(frame.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3], rgba[..., 3]
    return np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0, None


def read_frames(source: Path | bytes, max_pixels: int, what: str = "image"
                ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Every frame of the first frame's size as ``(rgb, alpha)`` arrays (frames of another size are
    left out, as ComfyUI does); ImageTooLarge when the frames together pass ``max_pixels``."""
    frames: list[tuple[np.ndarray, np.ndarray | None]] = []
    with _decoding(what, "read"):
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            _check_pixels(image, max_pixels, what)
            for frame in _frames(image):
                rgb, alpha = frame_to_arrays(frame)
                if frames and rgb.shape[:2] != frames[0][0].shape[:2]:
                    continue
                if (len(frames) + 1) * rgb.shape[0] * rgb.shape[1] > max_pixels:
                    raise ImageTooLarge(f"the {what} has more than {max_pixels} pixels over its frames; "
                                        "use a shorter or smaller animation")
                frames.append((rgb, alpha))
    if not frames:
        raise ImageError(f"the {what} has no frames")
    return frames


def text_chunks(image: Image.Image) -> dict[str, str]:
    """The text chunks of a decoded PNG (empty for other formats)."""
    return {key: value for key, value in (getattr(image, "text", None) or {}).items() if isinstance(value, str)}


# --------------------------------------------------------------------------- encoding


def to_8bit(array: np.ndarray) -> np.ndarray:
    """Float pixels in 0..1 as ``uint8`` the way ComfyUI converts them: scaled by 255, clipped to 0..255,
    then truncated (0.999 -> 254, 1/255 - eps -> 0), so a saved image matches ComfyUI's byte for byte. NaN
    becomes 0. Every IMAGE that becomes 8-bit pixels (saved, previewed, sent) goes through here."""
    scaled = np.clip(np.asarray(array, dtype=np.float32) * np.float32(255.0), 0.0, 255.0)
    return np.nan_to_num(scaled, nan=0.0).astype(np.uint8)


def array_to_image(array: np.ndarray) -> Image.Image:
    """A float ``[H, W, C]`` array in 0..1 (C = 1, 3 or 4) as an 8-bit image (:func:`to_8bit`)."""
    pixels = to_8bit(array)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return Image.fromarray(pixels)


def encode_png(image: Image.Image, *, prompt: Mapping[str, Any] | None = None,
               extra_pnginfo: Mapping[str, Any] | None = None, text: Mapping[str, str] | None = None,
               compress_level: int = 4) -> bytes:
    """PNG bytes carrying ``prompt`` and ``extra_pnginfo`` as workflow text chunks (ComfyUI's layout)
    plus any raw ``text`` chunks."""
    info = png_text_info(prompt, extra_pnginfo) if prompt is not None or extra_pnginfo else PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=compress_level)
    return out.getvalue()


def encode_animated_png(frames: Sequence[Image.Image], duration_ms: int, *,
                        prompt: Mapping[str, Any] | None = None, extra_pnginfo: Mapping[str, Any] | None = None,
                        compress_level: int = 4) -> bytes:
    """An APNG of ``frames``, each shown ``duration_ms``, with ComfyUI's ``comf`` metadata chunks."""
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=list(frames[1:]), duration=duration_ms,
                   pnginfo=animated_png_info(prompt, extra_pnginfo), compress_level=compress_level)
    return out.getvalue()


def encode_animated_webp(frames: Sequence[Image.Image], duration_ms: int, *,
                         prompt: Mapping[str, Any] | None = None, extra_pnginfo: Mapping[str, Any] | None = None,
                         lossless: bool = True, quality: int = 80, method: int = 4) -> bytes:
    """An animated WebP of ``frames``, each shown ``duration_ms``, with ComfyUI's EXIF workflow metadata."""
    exif = frames[0].getexif()
    for tag, text in webp_exif_entries(prompt, extra_pnginfo).items():
        exif[tag] = text
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=list(frames[1:]), duration=duration_ms,
                   exif=exif, lossless=lossless, quality=quality, method=method)
    return out.getvalue()


def encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """``image`` as ``png``, ``webp`` or ``jpeg`` (JPEG drops alpha)."""
    fmt = fmt.lower()
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG")
    elif fmt in PREVIEW_FORMATS:
        picture = image.convert("RGB") if fmt == "jpeg" else image
        picture.save(out, format=fmt.upper(), quality=max(1, min(100, quality)))
    else:
        raise ValueError(f"cannot encode images as {fmt!r}; use png, webp or jpeg")
    return out.getvalue()


def select_channel(image: Image.Image, channel: str) -> Image.Image:
    """``rgba`` (as is), ``rgb`` (alpha dropped) or ``a`` (an RGBA image holding only the alpha)."""
    if channel == "rgb":
        return image.convert("RGB")
    if channel == "a":
        only_alpha = Image.new("RGBA", image.size)
        only_alpha.putalpha(image.convert("RGBA").getchannel("A"))
        return only_alpha
    return image


def with_mask_alpha(original: Image.Image, mask: Image.Image) -> bytes:
    """The original as PNG with the mask's alpha as its alpha (resized to fit); its text chunks kept."""
    rgba = original.convert("RGBA")
    alpha = mask.convert("RGBA").getchannel("A")
    if alpha.size != rgba.size:
        alpha = alpha.resize(rgba.size, Image.Resampling.BILINEAR)
    rgba.putalpha(alpha)
    return encode_png(rgba, text=text_chunks(original))
