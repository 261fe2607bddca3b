"""v2 tensors on the wire: JSON and binary requests, responses readable by Triton's own client, bodies."""

from __future__ import annotations

import gzip
import json
import struct

import httpx
import numpy as np
import pytest
from tritonclient.http import InferResult

from edgecnn.serve.protocol import (
    OutputTensor,
    ProtocolError,
    check_input,
    classification,
    datatype_of,
    decode_request,
    decompress,
    encode_response,
    multipart_file,
)

SHAPE = (None, 2, 2, 1)


def json_request(data, shape=(1, 2, 2, 1), datatype="UINT8", name="image", **extra) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}], **extra}
    ).encode()


def binary_request(array: np.ndarray, datatype="UINT8", size=None, **extra) -> tuple[bytes, str]:
    raw = array.tobytes()
    tensor = {
        "name": "image",
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(raw) if size is None else size},
    }
    header = json.dumps({"inputs": [tensor], **extra}).encode()
    return header + raw, str(len(header))


def test_flat_and_nested_json_data_decode_to_the_same_uint8_batch():
    flat = decode_request(json_request([0, 1, 2, 255], id="req-7"))
    nested = decode_request(json_request([[[[0], [1]], [[2], [255]]]]))
    expected = np.array([0, 1, 2, 255], dtype=np.uint8).reshape(1, 2, 2, 1)
    for req in (flat, nested):
        got = check_input(req, "image", "UINT8", SHAPE)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)
    assert flat.id == "req-7" and nested.id is None
    assert flat.outputs is None and flat.binary_output is False


def test_binary_input_is_read_after_the_json_header():
    batch = np.arange(12, dtype=np.uint8).reshape(3, 2, 2, 1)
    body, length = binary_request(batch, parameters={"binary_data_output": True})
    req = decode_request(body, length)
    np.testing.assert_array_equal(check_input(req, "image", "UINT8", SHAPE), batch)
    assert req.binary_output is True


@pytest.mark.parametrize(
    "body, header, message",
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (json.dumps({"inputs": []}).encode(), None, 'no "inputs" list'),
        (json_request([0, 1, 2]), None, r"needs 4 values, data has 3"),
        (json_request([0, 1, 2, 256]), None, r"values 0..256 do not fit UINT8"),
        (json_request([0, 1, 2, -1]), None, r"do not fit UINT8"),
        (json_request([0.5, 1, 2, 3]), None, "not UINT8 numbers"),
        (json_request([0, 1, 2.5, 3]), None, "data holds 2.5, not UINT8 numbers"),
        (json_request([0, 1, 2, 2**70]), None, f"data holds {2**70}, not UINT8 numbers"),
        (json_request(["a", "b", "c", "d"]), None, "not UINT8 numbers"),
        (json_request([[0, 1], [2]]), None, "regular"),
        (json_request([0, 1, 2, 3], shape=(1, 2, -2, 1)), None, "non-negative integers"),
        (json_request([0, 1, 2, 3], datatype="FLOAT"), None, "datatype 'FLOAT' is not supported"),
        (
            json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "UINT8"}]}).encode(),
            None,
            'neither "data"',
        ),
        (json_request([0, 1, 2, 3]), "100000", "outside the"),
        (json_request([0, 1, 2, 3]), "x", "not a number"),
        (
            json_request([0, 1, 2, 3], outputs=[{"name": "p", "parameters": {"classification": -1}}]),
            None,
            "classification",
        ),
        (json_request([0, 1, 2, 3], parameters={"binary_data_output": "yes"}), None, "true or false"),
        (json_request([0, 1, 2, 3], id={"a": 1}), None, '"id" must be a string'),
    ],
)
def test_malformed_requests_say_what_is_wrong(body, header, message):
    with pytest.raises(ProtocolError, match=message) as info:
        decode_request(body, header)
    assert info.value.status == 400


def test_binary_sizes_must_match_the_shape_and_the_body():
    batch = np.zeros((1, 2, 2, 1), dtype=np.uint8)
    body, length = binary_request(batch, size=3)
    with pytest.raises(
        ProtocolError, match=r"binary_data_size 3 does not match shape \[1, 2, 2, 1\] of UINT8 \(4 bytes\)"
    ):
        decode_request(body, length)
    body, length = binary_request(batch)
    with pytest.raises(ProtocolError, match="runs past the end"):
        decode_request(body[:-1], length)
    with pytest.raises(
        ProtocolError, match="5 bytes follow the JSON header but the inputs' binary_data_size add up to 4"
    ):
        decode_request(body + b"x", length)


@pytest.mark.parametrize(
    "request_body, message",
    [
        (json_request([0, 1, 2, 3], name="pixels"), "unknown input 'pixels': the model's input is 'image'"),
        (json_request([0.0, 1, 2, 3], datatype="FP32"), "datatype FP32 does not match the model's UINT8"),
        (json_request([0] * 8, shape=(1, 2, 4, 1)), r"shape \[1, 2, 4, 1\] does not match the model's \[-1, 2, 2, 1\]"),
        (json_request([0] * 4, shape=(4, 1)), r"shape \[4, 1\] does not match"),
        (json_request([], shape=(0, 2, 2, 1)), "the batch is empty"),
    ],
)
def test_the_input_must_match_the_model(request_body, message):
    with pytest.raises(ProtocolError, match=message):
        check_input(decode_request(request_body), "image", "UINT8", SHAPE)


def test_a_json_response_is_what_tritons_client_reads():
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    body, length = encode_response("tiny", "1", "abc", [OutputTensor("probabilities", probs, binary=False)])
    assert length is None
    as_json = json.loads(body)
    assert as_json["id"] == "abc" and as_json["model_name"] == "tiny"
    assert as_json["outputs"][0] == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [0.25, 0.75, 0.5, 0.5],
    }
    np.testing.assert_array_equal(InferResult.from_response_body(body).as_numpy("probabilities"), probs)


def test_a_binary_response_with_classification_is_what_tritons_client_reads():
    probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
    top2 = classification(probs, 2, ("cat", "dog", "owl"))
    body, length = encode_response(
        "tiny",
        "1",
        None,
        [
            OutputTensor("probabilities", probs, binary=True),
            OutputTensor("classes", top2, binary=True, datatype="BYTES"),
        ],
    )
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 24}
    result = InferResult.from_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
    assert result.as_numpy("classes").tolist() == [
        [b"0.700000:1:dog", b"0.200000:2:owl"],
        [b"0.600000:0:cat", b"0.300000:1:dog"],
    ]


def test_datatype_names_follow_the_v2_protocol():
    assert [datatype_of(t) for t in (np.uint8, np.float32, np.float16, np.int64, np.bool_)] == [
        "UINT8",
        "FP32",
        "FP16",
        "INT64",
        "BOOL",
    ]


def test_a_multipart_form_field_comes_back_byte_for_byte():
    png_like = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\r\n--not-the-boundary\r\n"
    request = httpx.Request("POST", "http://x/", data={"note": "hi"}, files={"image": ("a.png", png_like, "image/png")})
    assert multipart_file(request.read(), request.headers["content-type"]) == png_like
    request = httpx.Request("POST", "http://x/", files={"upload": ("b.png", b"other", "image/png")})
    assert multipart_file(request.read(), request.headers["content-type"]) == b"other"
    with pytest.raises(ProtocolError, match="boundary"):
        multipart_file(b"", "multipart/form-data")


def test_compressed_bodies_are_inflated_within_the_limit():
    body = json_request([0, 1, 2, 3])
    assert decompress(gzip.compress(body), "gzip", 1000) == body
    import zlib

    assert decompress(zlib.compress(body), "deflate", 1000) == body
    with pytest.raises(ProtocolError, match="more than the 1,000-byte limit") as info:
        decompress(gzip.compress(b"\0" * 100_000), "gzip", 1000)
    assert info.value.status == 413
    with pytest.raises(ProtocolError, match="'br' is not supported") as info:
        decompress(body, "br", 1000)
    assert info.value.status == 415
    with pytest.raises(ProtocolError, match="cannot be decompressed"):
        decompress(b"plain", "gzip", 1000)
    with pytest.raises(ProtocolError, match="bytes after its end"):  # never silently drop a second member
        decompress(gzip.compress(body) + gzip.compress(body), "gzip", 1000)


def test_bytes_outputs_use_four_byte_little_endian_lengths():
    body, length = encode_response("m", "1", None, [OutputTensor("c", np.array([b"ab", b""], dtype=object), True)])
    assert body[length:] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
