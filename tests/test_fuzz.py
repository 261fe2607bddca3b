"""Property-based fuzzing of everything that reads bytes from a client or a folder: the KServe v2
request decoder (JSON and binary), the multipart parser, Content-Encoding, and the image loader.

The only outcomes allowed are a result or edgecnn's own error with a message: never another
exception, never memory far beyond the input (tracemalloc), never a hang (a deadline). CI runs the
"ci" profile; `tools/fuzz.py` runs the "long" one and prints the counts (docs/RELIABILITY.md).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tracemalloc
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgecnn.errors import EdgecnnError  # noqa: E402
from edgecnn.images import FORMATS, load_image  # noqa: E402
from edgecnn.serve.protocol import check_input, decode_request, decompress, multipart_file  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=400,
    deadline=2000,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("EDGECNN_FUZZ_EXAMPLES", "5000")),
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("EDGECNN_FUZZ_PROFILE", "ci"))

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's notes on mangled TIFF tags

MAX_BODY = 1 << 20
RUNS: dict[str, int] = {}  # examples run per target (tools/fuzz.py prints them)


def bounded(target: str, fn, *args, budget: int):
    """Call fn(*args): its result or an EdgecnnError; anything else fails the example, and so does
    a peak of traced memory above `budget` bytes."""
    RUNS[target] = RUNS.get(target, 0) + 1
    tracemalloc.start()
    try:
        return fn(*args)
    except EdgecnnError as exc:
        assert str(exc), "an error without a message"
        assert len(str(exc)) <= 1000, f"a {len(str(exc)):,}-character message: it must not echo the input back"
        return exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= budget, (
            f"{target}: {peak:,} bytes traced for a {sum(len(a) for a in args if isinstance(a, bytes)):,}-byte input"
        )


# -- KServe v2 requests ------------------------------------------------------------------------
DATATYPES = [
    "BOOL",
    "UINT8",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
    "nope",
    7,
    None,
]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8)
)
shapes = st.one_of(st.lists(st.integers(-3, 2**41), max_size=5), st.text(max_size=4), st.none(), st.integers())
any_json = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
tensor_specs = st.fixed_dictionaries(
    {
        "name": st.one_of(st.text(max_size=8), st.integers(), any_json),
        "datatype": st.one_of(st.sampled_from(DATATYPES), any_json),  # a dict here answered 500 (found by schemathesis)
        "shape": st.one_of(shapes, any_json),
    },
    optional={
        "data": st.one_of(
            st.lists(json_scalars, max_size=16), json_scalars, st.lists(st.lists(json_scalars, max_size=4), max_size=4)
        ),
        "parameters": st.one_of(st.dictionaries(st.text(max_size=12), json_scalars, max_size=3), json_scalars),
    },
)
output_specs = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=12), st.integers())},
    optional={
        "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification", "x"]), json_scalars, max_size=2)
    },
)
requests = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensor_specs, max_size=3), json_scalars)},
    optional={
        "id": json_scalars,
        "outputs": st.one_of(st.lists(output_specs, max_size=3), json_scalars),
        "parameters": st.one_of(
            st.dictionaries(st.sampled_from(["binary_data_output", "x"]), json_scalars, max_size=2), json_scalars
        ),
    },
)


def _decode_and_check(body: bytes, header_length):
    req = decode_request(body, header_length, MAX_BODY)
    return check_input(req, "image", "UINT8", (None, 8, 8, 1), 256)


@given(requests)
def test_any_json_request_decodes_or_is_a_400_with_a_message(request):
    body = json.dumps(request).encode()
    bounded("infer json", _decode_and_check, body, None, budget=64 * len(body) + (1 << 20))


@given(st.binary(max_size=2048), st.one_of(st.none(), st.integers(-5, 4096).map(str), st.text(max_size=6)))
def test_any_bytes_with_any_header_length_decode_or_are_a_400(body, header_length):
    bounded("infer binary", _decode_and_check, body, header_length, budget=64 * len(body) + (1 << 20))


@given(requests, st.binary(max_size=1024), st.integers(0, 64))
def test_a_binary_request_with_a_mutated_header_decodes_or_is_a_400(request, tail, cut):
    for spec in request["inputs"] if isinstance(request["inputs"], list) else []:
        if isinstance(spec, dict):
            spec.pop("data", None)
            spec["parameters"] = {"binary_data_size": len(tail)}
    header = json.dumps(request).encode()
    header = header[: max(0, len(header) - cut)] if cut % 2 else header
    bounded(
        "infer binary header",
        _decode_and_check,
        header + tail,
        str(len(header)),
        budget=64 * (len(header) + len(tail)) + (1 << 20),
    )


def test_a_valid_request_still_decodes():  # the fuzzers above must not pass by refusing everything
    rows = np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1)
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": rows.ravel().tolist()}]}
    ).encode()
    np.testing.assert_array_equal(_decode_and_check(body, None), rows)


# -- multipart and Content-Encoding ---------------------------------------------------------
def _multipart(boundary: str, parts) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"  # RFC 2046, no space
boundaries = st.text(st.sampled_from(BCHARS), min_size=1, max_size=70)
parts = st.lists(
    st.tuples(
        st.sampled_from(["image", "file", "other", ""]),
        st.one_of(st.none(), st.text(max_size=10)),
        st.binary(max_size=256),
    ),
    max_size=3,
)


@given(boundaries, parts, st.integers(0, 400), st.binary(max_size=8))
def test_any_multipart_body_yields_the_file_or_a_400(boundary, fields, cut, noise):
    body = _multipart(boundary, fields)
    mutated = body[:cut] + noise + body[cut + len(noise) :] if cut < len(body) else body
    content_type = f'multipart/form-data; boundary="{boundary}"'
    result = bounded("multipart", multipart_file, mutated, content_type, budget=16 * len(mutated) + (1 << 20))
    if (
        mutated == body
        and any(name in ("image", "file") and content for name, _, content in fields)
        and all(f"--{boundary}".encode() not in c for _, _, c in fields)
    ):
        assert isinstance(result, bytes)


@given(
    st.binary(max_size=4096),
    st.sampled_from(["gzip", "deflate", "identity", "br", "gzip, gzip", "", None]),
    st.integers(1, 8192),
)
def test_any_body_in_any_content_encoding_inflates_within_the_limit_or_is_refused(body, encoding, limit):
    for data in (body, gzip.compress(body), zlib.compress(body)):
        result = bounded(
            "content-encoding", decompress, data, encoding, limit, budget=4 * limit + 8 * len(data) + (1 << 20)
        )
        if isinstance(result, bytes) and encoding in ("gzip", "deflate"):  # identity: the body's own limit applies
            assert len(result) <= limit


BOMBS = {mb: gzip.compress(bytes(mb << 20), compresslevel=9) for mb in (1, 16, 64)}  # 1 KB .. 64 KB each


@settings(max_examples=12)
@given(st.sampled_from(sorted(BOMBS)), st.integers(1, 1 << 20), st.sampled_from(["gzip", "deflate"]))
def test_a_gzip_bomb_is_refused_without_inflating_past_the_limit(megabytes, limit, encoding):
    bomb = BOMBS[megabytes] if encoding == "gzip" else zlib.compress(bytes(megabytes << 20), 9)
    result = bounded("content-encoding bomb", decompress, bomb, encoding, limit, budget=2 * limit + (1 << 20))
    assert isinstance(result, EdgecnnError) and result.status == 413, result


# -- the image loader: random bytes and mutated real files ------------------------------------
def _seeds() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    out = {}
    for fmt in ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP", "PPM"):
        buf = io.BytesIO()
        rgb.save(buf, fmt)
        out[fmt] = buf.getvalue()
    assert set(out) <= set(FORMATS)
    return out


SEEDS = _seeds()


@given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.integers(0, 4096), st.binary(min_size=1, max_size=8)), max_size=6),
    st.integers(0, 4096),
)
def test_a_mutated_image_in_any_format_loads_or_is_an_image_error(fmt, patches, truncate_at):
    data = bytearray(SEEDS[fmt])
    for at, noise in patches:
        at %= len(data)
        data[at : at + len(noise)] = noise
    data = bytes(data[:truncate_at]) if truncate_at < len(data) // 2 else bytes(data)
    result = bounded(f"image {fmt}", load_image, data, (8, 8), 3, 1 << 20, budget=(64 << 20))
    if isinstance(result, np.ndarray):
        assert result.shape == (8, 8, 3) and result.dtype == np.uint8


@given(st.binary(max_size=512))
def test_random_bytes_are_an_image_error(data):
    result = bounded("image random", load_image, data, (8, 8), 1, 1 << 20, budget=8 << 20)
    assert isinstance(result, (np.ndarray, EdgecnnError))


def test_every_seed_image_loads():  # the mutations start from files the loader reads
    for fmt, data in SEEDS.items():
        assert load_image(data, (8, 8), 3).shape == (8, 8, 3), fmt


def test_a_damaged_tiff_that_made_pillow_raise_type_error_is_an_image_error():
    """Found by `tools/fuzz.py --examples 20000`: Pillow 13's TIFF loader raised TypeError (not an
    OSError) on this file, which the server answered with 500."""
    data = bytearray(SEEDS["TIFF"])
    at = 1072 % len(data)
    data[at : at + 1] = b"\x0b"
    data = bytes(data[:140]) if 140 < len(data) // 2 else bytes(data)
    with pytest.raises(EdgecnnError, match="not a decodable image"):
        load_image(data, (8, 8), 3, 1 << 20)


@pytest.mark.parametrize(
    "shape",
    [[1] * 70, [2**63], [int("9" * 4300)]],  # more axes than NumPy allows; past int64; too long to print
)
def test_shapes_numpy_or_int_cannot_hold_are_a_400_not_a_500(shape):
    """Found by a second fuzzing campaign (helper branch issue-13-fuzz): each raised ValueError -> 500."""
    body = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": shape, "data": [0]}]}).encode()
    with pytest.raises(EdgecnnError, match="shape must be a list of at most 32 non-negative integers"):
        _decode_and_check(body, None)
