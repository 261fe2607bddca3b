"""Bombs against a live server, one per image format Pillow opens for edgecnn, plus number and
nesting bombs in JSON: each refused with a message, and the server's peak memory stays bounded."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import make_linear_onnx
from test_serve import ServerProcess

PEAK_GROWTH_LIMIT = 64 << 20  # bytes the server's peak RSS may grow over all the bombs together


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb() -> bytes:
    """A real 30,000 x 30,000 1-bit PNG: 107 KB on the wire, 900 megapixels decoded."""
    squeeze = zlib.compressobj(9)
    row = b"\x00" + bytes(30000 // 8)
    idat = b"".join(squeeze.compress(row) for _ in range(30000)) + squeeze.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0))
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def webp_bomb() -> bytes:
    """A lossless WebP whose header says 16,383 x 16,383 (WebP's largest: 268 megapixels)."""
    size_bits = (16383 - 1) | ((16383 - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", size_bits) + bytes(64)
    return b"RIFF" + struct.pack("<I", 12 + len(vp8l)) + b"WEBPVP8L" + struct.pack("<I", len(vp8l)) + vp8l


def tiff_bomb() -> bytes:
    """A TIFF with one strip of 100,000 x 100,000 8-bit pixels (10 gigapixels) declared."""
    side = 100_000
    entries = [
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 130),
        (277, 3, 1, 1),
        (278, 4, 1, side),
        (279, 4, 1, 0xFFFFFFFF),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(16)


def gif_bomb() -> bytes:
    """A GIF whose logical screen is 20,000 x 20,000 (400 megapixels) in 4 KB."""
    frame = Image.new("L", (20000, 20000 // 2000))  # one strip; the screen size is what is declared
    out = io.BytesIO()
    frame.save(out, "GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", 20000, 20000)  # logical screen width, height
    return bytes(data)


def gif_of_many_frames(frames: int = 3000) -> bytes:
    images = [Image.fromarray(np.full((8, 8), i % 256, np.uint8)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=10)
    return out.getvalue()


def peak_rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bombs")
    srv = ServerProcess(make_linear_onnx(root / "tiny" / "model.onnx"), root)
    httpx.post(
        srv.base + "/v2/models/tiny/classify", content=gif_of_many_frames(2), headers={"content-type": "image/gif"}
    )
    srv.peak_before = peak_rss(srv.proc.pid)  # after one decode warmed the pools
    yield srv
    assert srv.stop() == 0, srv.stderr_path.read_text()


@pytest.mark.parametrize("fmt, make", [("png", png_bomb), ("webp", webp_bomb), ("tiff", tiff_bomb), ("gif", gif_bomb)])
def test_a_pixel_bomb_in_each_format_gets_413_with_a_message(server, fmt, make):
    body = make()
    assert len(body) < 200_000
    reply = httpx.post(
        server.base + "/v2/models/tiny/classify", content=body, headers={"content-type": f"image/{fmt}"}, timeout=30
    )
    assert reply.status_code == 413, reply.text
    assert "pixel limit" in reply.json()["error"] or "exceeds limit" in reply.json()["error"]


def test_a_gif_of_thousands_of_frames_is_classified_by_its_first_frame_only(server):
    body = gif_of_many_frames()
    reply = httpx.post(
        server.base + "/v2/models/tiny/classify", content=body, headers={"content-type": "image/gif"}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert float(reply.headers["Server-Timing"].split("dur=")[1]) < 1000  # ms: frames after the first are never read


@pytest.mark.parametrize(
    "body, why",
    [
        (
            b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [' + b"9" * 100_000 + b'], "data": []}]}',
            "400",
        ),
        (
            b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": ['
            + b"1e999," * 63
            + b"1e999]}]}",
            "400",
        ),
        (
            b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": ['
            + (b"9" * 4000 + b",") * 63
            + b"0]}]}",
            "400",
        ),
        (b"[" * 200_000 + b"]" * 200_000, "400"),
    ],
)
def test_number_and_nesting_bombs_in_json_get_400(server, body, why):
    reply = httpx.post(
        server.base + "/v2/models/tiny/infer", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert str(reply.status_code) == why, reply.text
    assert reply.json()["error"]


def test_after_every_bomb_the_server_answers_and_its_peak_memory_grew_little(server):
    ok = httpx.get(server.base + "/v2/health/ready", timeout=5)
    assert ok.status_code == 200
    growth = peak_rss(server.proc.pid) - server.peak_before
    assert growth < PEAK_GROWTH_LIMIT, f"peak RSS grew by {growth / 2**20:.1f} MiB"
