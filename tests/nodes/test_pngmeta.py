"""PNG text chunks: written by png_text_info, read back by read_png_metadata."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.pngmeta import png_text_info, read_png_metadata

PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0]}}}
WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler", "title": "Ünïcode ✓"}]}


def _png(info: PngInfo | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _with_chunks(*chunks: bytes) -> bytes:
    """A PNG with extra chunks inserted right after IHDR."""
    data = _png()
    ihdr_end = 8 + 8 + 13 + 4
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]


def test_round_trip_prompt_and_workflow() -> None:
    data = _png(png_text_info(PROMPT, {"workflow": WORKFLOW}))
    assert read_png_metadata(data) == {"prompt": PROMPT, "workflow": WORKFLOW}
    # PIL sees ordinary text chunks, as ComfyUI's readers expect.
    with Image.open(io.BytesIO(data)) as img:
        assert json.loads(img.text["prompt"]) == PROMPT


def test_absent_prompt_writes_no_chunk() -> None:
    data = _png(png_text_info(None, {"workflow": WORKFLOW}))
    assert read_png_metadata(data) == {"workflow": WORKFLOW}
    assert read_png_metadata(_png()) == {}


def test_itxt_and_ztxt_are_read() -> None:
    info = PngInfo()
    info.add_itxt("workflow", json.dumps(WORKFLOW, ensure_ascii=False), zip=True)
    info.add_text("prompt", json.dumps(PROMPT), zip=True)  # zTXt
    assert read_png_metadata(_png(info)) == {"prompt": PROMPT, "workflow": WORKFLOW}


def test_invalid_json_and_other_keys_are_skipped() -> None:
    data = _with_chunks(
        _chunk(b"tEXt", b"prompt\x00{not json"),
        _chunk(b"tEXt", b"parameters\x00{\"a\": 1}"),
        _chunk(b"tEXt", b"workflow\x00[1, 2]"),
    )
    assert read_png_metadata(data) == {"workflow": [1, 2]}


def test_oversized_compressed_chunk_is_skipped() -> None:
    payload = json.dumps({"big": "x" * 10_000}).encode()
    data = _with_chunks(_chunk(b"zTXt", b"prompt\x00\x00" + zlib.compress(payload)))
    assert read_png_metadata(data, max_text_bytes=1000) == {}
    assert read_png_metadata(data)["prompt"]["big"] == "x" * 10_000


def test_truncated_png_returns_what_was_read() -> None:
    data = _png(png_text_info(PROMPT, {"workflow": WORKFLOW}))
    cut = data.index(b"IDAT")
    assert read_png_metadata(data[:cut]) == {"prompt": PROMPT, "workflow": WORKFLOW}


def test_non_png_is_refused() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="JPEG")
    with pytest.raises(ValueError, match="not a PNG"):
        read_png_metadata(buffer.getvalue())
    with pytest.raises(ValueError, match="not a PNG"):
        read_png_metadata(b"")
