"""Workflow metadata in PNG files: what SaveImage writes and what a dropped PNG gives back.

ComfyUI stores the API prompt in a text chunk ``prompt`` and each key of ``extra_pnginfo`` (the
editor sends ``{"workflow": ...}``) in a text chunk of that name, each value as JSON. Reading walks
the PNG chunks itself instead of opening the image with PIL: no pixels are decoded, so a huge or
hostile image costs nothing, and every decompressed text chunk is bounded in size.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Mapping
from typing import Any

from PIL.PngImagePlugin import PngInfo

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: The text chunks that carry a workflow.
METADATA_KEYS: tuple[str, ...] = ("prompt", "workflow")

#: Largest decompressed text chunk read (zTXt / compressed iTXt); larger ones are skipped.
MAX_TEXT_BYTES = 64 * 1024 * 1024

_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def png_text_info(prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None) -> PngInfo:
    """Text chunks for a saved PNG: ``prompt`` (the API prompt) and one per extra_pnginfo key.

    Values are written as JSON (ASCII, so plain tEXt chunks, as ComfyUI writes them).
    """
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        if not _valid_keyword(key):
            log.warning("not embedding PNG text chunk %r: keys must be 1-79 Latin-1 characters", key)
            continue
        info.add_text(key, json.dumps(value))
    return info


def workflow_texts(prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None
                   ) -> list[tuple[str, str]]:
    """``(key, JSON)`` pairs of a file's workflow metadata: ``prompt`` first, then each extra_pnginfo key
    (keys that are not 1-79 Latin-1 characters are left out, with a warning)."""
    pairs: list[tuple[str, str]] = []
    if prompt is not None:
        pairs.append(("prompt", json.dumps(prompt)))
    for key, value in (extra_pnginfo or {}).items():
        if not _valid_keyword(key):
            log.warning("not embedding workflow metadata %r: keys must be 1-79 Latin-1 characters", key)
            continue
        pairs.append((key, json.dumps(value)))
    return pairs


def animated_png_info(prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None) -> PngInfo:
    """ComfyUI's APNG metadata: one private ``comf`` chunk per key (``key\\0JSON``), after the image data."""
    info = PngInfo()
    for key, text in workflow_texts(prompt, extra_pnginfo):
        info.add(b"comf", key.encode("latin-1") + b"\x00" + text.encode("latin-1"), after_idat=True)
    return info


def webp_exif_entries(prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None
                      ) -> dict[int, str]:
    """ComfyUI's WebP metadata as EXIF tags: 0x0110 (Model) = ``prompt:JSON``; the extra_pnginfo keys
    count down from 0x010F (Make), each ``key:JSON``."""
    entries: dict[int, str] = {}
    if prompt is not None:
        entries[0x0110] = f"prompt:{json.dumps(prompt)}"
    for offset, (key, text) in enumerate(workflow_texts(None, extra_pnginfo)):
        entries[0x010F - offset] = f"{key}:{text}"
    return entries


def read_png_metadata(data: bytes, *, max_text_bytes: int = MAX_TEXT_BYTES) -> dict[str, Any]:
    """The parsed JSON of the ``prompt`` and ``workflow`` text chunks a PNG holds.

    Reads tEXt, zTXt and iTXt chunks; the first valid chunk of each key wins. Chunks that are
    malformed, not JSON, or larger than ``max_text_bytes`` once decompressed are skipped. A
    truncated file yields what was read before the cut. Raises ValueError for non-PNG data.
    """
    view = memoryview(data)
    if bytes(view[:8]) != PNG_SIGNATURE:
        raise ValueError("not a PNG file: the data does not start with the PNG signature")
    found: dict[str, Any] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(view):
        length, chunk_type = struct.unpack(">I4s", view[pos : pos + 8])
        body_start = pos + 8
        body_end = body_start + length
        if body_end + 4 > len(view):
            log.debug("PNG truncated inside a %r chunk", chunk_type)
            break
        if chunk_type in _TEXT_CHUNKS:
            entry = _text_chunk(chunk_type, bytes(view[body_start:body_end]), max_text_bytes)
            if entry is not None and entry[0] in METADATA_KEYS and entry[0] not in found:
                key, text = entry
                try:
                    found[key] = json.loads(text)
                except ValueError:
                    log.debug("PNG text chunk %r is not JSON; skipped", key)
        elif chunk_type == b"IEND":
            break
        pos = body_end + 4
    return found


def _valid_keyword(key: str) -> bool:
    if not 1 <= len(key) <= 79:
        return False
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _text_chunk(chunk_type: bytes, body: bytes, limit: int) -> tuple[str, str] | None:
    """``(keyword, text)`` of one text chunk, or None when it is malformed or too large."""
    raw_key, sep, rest = body.partition(b"\x00")
    if not sep:
        return None
    key = raw_key.decode("latin-1")
    if chunk_type == b"tEXt":
        return key, rest.decode("latin-1")
    if chunk_type == b"zTXt":
        if not rest or rest[0] != 0:
            return None
        inflated = _inflate(rest[1:], limit)
        return None if inflated is None else (key, inflated.decode("latin-1"))
    # iTXt: compression flag, compression method, language tag\0, translated keyword\0, text.
    if len(rest) < 2:
        return None
    compressed, method = rest[0], rest[1]
    _language, sep1, rest = rest[2:].partition(b"\x00")
    _translated, sep2, payload = rest.partition(b"\x00")
    if not (sep1 and sep2):
        return None
    if compressed:
        if method != 0:
            return None
        inflated = _inflate(payload, limit)
        if inflated is None:
            return None
        payload = inflated
    try:
        return key, payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _inflate(data: bytes, limit: int) -> bytes | None:
    """zlib-decompress at most ``limit`` bytes; None when the stream is bad or expands further."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
    except zlib.error:
        return None
    if not inflater.eof:
        if len(out) >= limit:
            log.warning("skipping a PNG text chunk larger than %d bytes when decompressed", limit)
        return None
    return out
