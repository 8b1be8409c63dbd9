"""POST /upload/image and /upload/mask: where files land, name clashes, masks, round trips."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from tests.api.conftest import LiveServer, multipart, png_bytes
from tests.api.test_routes import assert_error_schema


def test_upload_then_view_and_load_image_choices(server: LiveServer) -> None:
    data = png_bytes((7, 5), (9, 8, 7, 255))
    reply = server.upload("/api/upload/image", data, "photo.png", fields={"subfolder": "shots/day1"})
    assert reply.status == 200
    assert reply.json() == {"name": "photo.png", "subfolder": "shots/day1", "type": "input"}
    assert (server.settings.input_dir / "shots" / "day1" / "photo.png").read_bytes() == data
    view = server.get("/view?filename=photo.png&subfolder=shots/day1&type=input")
    assert view.status == 200 and view.body == data
    choices = server.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert "shots/day1/photo.png" in choices


def test_upload_types(server: LiveServer) -> None:
    for kind, folder in (("temp", server.settings.temp_dir), ("output", server.settings.output_dir)):
        reply = server.upload("/upload/image", png_bytes(), f"in-{kind}.png", fields={"type": kind})
        assert reply.json() == {"name": f"in-{kind}.png", "subfolder": "", "type": kind}
        assert (folder / f"in-{kind}.png").is_file()


def test_name_clash_identical_bytes_and_overwrite(server: LiveServer) -> None:
    first, second, third = png_bytes(color=(1, 1, 1, 255)), png_bytes(color=(2, 2, 2, 255)), png_bytes(
        color=(3, 3, 3, 255))
    assert server.upload("/upload/image", first, "clash.png").json()["name"] == "clash.png"
    assert server.upload("/upload/image", first, "clash.png").json()["name"] == "clash.png"
    assert server.upload("/upload/image", second, "clash.png").json()["name"] == "clash (1).png"
    assert server.upload("/upload/image", second, "clash.png").json()["name"] == "clash (1).png"
    assert server.upload("/upload/image", third, "clash.png").json()["name"] == "clash (2).png"
    inputs = server.settings.input_dir
    assert (inputs / "clash.png").read_bytes() == first
    reply = server.upload("/upload/image", third, "clash.png", fields={"overwrite": "true"})
    assert reply.json()["name"] == "clash.png"
    assert (inputs / "clash.png").read_bytes() == third
    leftovers = [p.name for p in inputs.iterdir() if p.name.startswith(".upload-")]
    assert leftovers == []


def test_upload_without_image_is_400(server: LiveServer) -> None:
    from tests.api.conftest import multipart

    body, ctype = multipart({"type": "input"}, {})
    reply = server.request("POST", "/upload/image", body=body, headers={"Content-Type": ctype})
    assert reply.status == 400
    assert_error_schema(reply.json(), "no_image")
    reply = server.post("/upload/image", {"image": "not multipart"})
    assert reply.status == 400
    assert_error_schema(reply.json())


def test_upload_mask_writes_alpha_into_original(server: LiveServer) -> None:
    original = png_bytes((8, 6), (200, 100, 50, 255), text={"workflow": '{"nodes": []}'})
    server.upload("/upload/image", original, "portrait.png", fields={"subfolder": "masks"})
    mask = Image.new("RGBA", (8, 6), (0, 0, 0, 255))
    for x in range(4):
        for y in range(6):
            mask.putpixel((x, y), (0, 0, 0, 0))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    ref = json.dumps({"filename": "portrait.png", "subfolder": "masks", "type": "input"})
    reply = server.upload("/upload/mask", buffer.getvalue(), "portrait-mask.png",
                          fields={"original_ref": ref, "subfolder": "clipspace", "type": "input"})
    assert reply.status == 200, reply.body
    assert reply.json() == {"name": "portrait-mask.png", "subfolder": "clipspace", "type": "input"}
    result = Image.open(server.settings.input_dir / "clipspace" / "portrait-mask.png")
    assert result.mode == "RGBA" and result.size == (8, 6)
    assert result.getpixel((0, 0)) == (200, 100, 50, 0)
    assert result.getpixel((7, 5)) == (200, 100, 50, 255)
    assert result.text.get("workflow") == '{"nodes": []}'


def test_upload_mask_scaled_and_missing_original(server: LiveServer) -> None:
    server.upload("/upload/image", png_bytes((8, 8), (5, 5, 5, 255)), "square.png")
    small_mask = png_bytes((4, 4), (0, 0, 0, 0))
    ref = json.dumps({"filename": "square.png [input]"})
    reply = server.upload("/upload/mask", small_mask, "square-mask.png", fields={"original_ref": ref})
    assert reply.status == 200, reply.body
    result = Image.open(server.settings.input_dir / "square-mask.png")
    assert result.size == (8, 8) and result.getpixel((3, 3))[3] == 0
    missing = json.dumps({"filename": "nope.png", "type": "input"})
    reply = server.upload("/upload/mask", small_mask, "m.png", fields={"original_ref": missing})
    assert reply.status == 404
    assert_error_schema(reply.json(), "not_found")


# --------------------------------------------------------------------------- malformed multipart (issue 15, F5)


def _malformed_bodies() -> dict[str, tuple[bytes, str]]:
    """Multipart bodies aiohttp cannot parse, each with its Content-Type."""
    body, ctype = multipart({}, {"image": ("a.png", png_bytes(), "image/png")})
    boundary = ctype.split("boundary=", 1)[1]
    nul_body, nul_ctype = multipart({}, {"image": ("a\x00b.png", png_bytes(), "image/png")})
    return {
        "no boundary": (b"x", "multipart/form-data"),
        "empty boundary": (body, "multipart/form-data; boundary="),
        "wrong boundary": (body, "multipart/form-data; boundary=not-the-one"),
        "no closing delimiter": (body[: body.rindex(f"--{boundary}--".encode())], ctype),
        "cut in the headers": (body[:60], ctype),
        "NUL in the filename": (nul_body, nul_ctype),
        "garbage part header": (b"--abc\r\nnot a header\r\n\r\nx\r\n--abc--\r\n", "multipart/form-data; boundary=abc"),
    }


@pytest.mark.parametrize("path", ["/upload/image", "/upload/mask"])
@pytest.mark.parametrize("case", list(_malformed_bodies()))
def test_malformed_multipart_is_400_in_the_error_schema(server: LiveServer, path: str, case: str) -> None:
    body, ctype = _malformed_bodies()[case]
    reply = server.request("POST", path, body=body, headers={"Content-Type": ctype})
    assert reply.status == 400, reply.body[:300]
    assert_error_schema(reply.json())


def test_data_binary_without_multipart_is_400(server: LiveServer) -> None:
    reply = server.request("POST", "/upload/image", body=b"x",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 400
    assert_error_schema(reply.json(), "invalid_request")


def test_deeply_nested_original_ref_is_400(server: LiveServer) -> None:
    """json.loads raised RecursionError (a 500) on a deeply nested original_ref, issue 15."""
    ref = "[" * 20_000 + "]" * 20_000  # under the field limit, far past the parser's recursion limit
    reply = server.upload("/upload/mask", png_bytes(), "deep-mask.png", fields={"original_ref": ref})
    assert reply.status == 400, reply.body
    assert_error_schema(reply.json(), "invalid_request")


def test_upload_whose_content_encoding_lies_is_400(server: LiveServer) -> None:
    """A body that is not the gzip its Content-Encoding says raised RequestPayloadError (a 500), issue 15."""
    body, ctype = multipart({}, {"image": ("x.png", png_bytes(), "image/png")})
    reply = server.request("POST", "/upload/image", body=body,
                           headers={"Content-Type": ctype, "Content-Encoding": "gzip"})
    assert reply.status == 400, reply.body
    assert_error_schema(reply.json(), "invalid_multipart")
