"""KServe v2 (Open Inference Protocol) tensors over HTTP, with Triton's binary-data extension.

An inference request is a JSON object ``{"id", "parameters", "inputs": [{"name", "shape",
"datatype", "data", "parameters"}], "outputs": [{"name", "parameters"}]}``. With the
binary-data extension the JSON is followed by raw little-endian tensor bytes: the
``Inference-Header-Content-Length`` header gives the JSON's length and each binary input
says its ``binary_data_size``. Outputs come back binary when the request asks for it
(``binary_data`` on an output, or ``binary_data_output`` on the request); a
``classification: k`` output parameter returns the top k as "score:index:label" BYTES.

Pure functions over bytes and NumPy arrays; no HTTP framework here. Every malformed
request raises `ProtocolError` with the HTTP status to answer and a message saying what
was wrong.

Over 400 lines: the whole KServe v2 wire format (JSON and binary, requests and responses)
in one place, so that every rule of the protocol is checked once.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.runtime import top_k

HEADER_LENGTH = "inference-header-content-length"
MAX_RANK = 32  # axes of one input tensor (NumPy allows 64; more raised ValueError -> 500)

DATATYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}  # target kind -> JSON value kinds accepted


class ProtocolError(EdgecnnError):
    """A request the server cannot accept; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def datatype_of(dtype) -> str:
    """The v2 datatype name of a NumPy dtype (uint8 -> "UINT8", float32 -> "FP32")."""
    dtype = np.dtype(dtype)
    for name, known in DATATYPES.items():
        if known.kind == dtype.kind and known.itemsize == dtype.itemsize:
            return name
    return "BYTES"


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    array: np.ndarray  # already of `shape` and `datatype`


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool
    classification: int  # 0: the tensor itself; k > 0: top-k "score:index:label" strings


@dataclass(frozen=True)
class InferRequest:
    id: Optional[str]
    inputs: tuple[InputTensor, ...]
    outputs: Optional[tuple[OutputRequest, ...]]  # None: every output
    binary_output: bool  # the request's binary_data_output: the default for outputs


@dataclass(frozen=True)
class OutputTensor:
    name: str
    array: np.ndarray  # numbers, or an object array of bytes for BYTES
    binary: bool
    datatype: str = ""  # "" -> from the array's dtype (object arrays are BYTES)


# -- requests ------------------------------------------------------------------------------
def decode_request(
    body: bytes, header_length: Optional[str] = None, max_tensor_bytes: Optional[int] = None
) -> InferRequest:
    """Parse an infer request body; `header_length` is the Inference-Header-Content-Length header.

    max_tensor_bytes: the most bytes one decoded input may take (413 above it), checked from its
    shape before anything is allocated; None: no limit.
    """
    if header_length is None:
        header, binary = body, b""
    else:
        size = parse_header_length(header_length)
        if not 0 < size <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {size} is outside the {len(body)}-byte body")
        header, binary = body[:size], memoryview(body)[size:]
    request = json_object(header, "the request", 'a v2 inference request object (with an "inputs" list)')
    params = _object(request.get("parameters"), "request parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError('the request has no "inputs" list: send [{"name", "shape", "datatype", "data"}]')
    offset = 0
    decoded = []
    for spec in inputs:
        tensor, used = _decode_input(spec, binary, offset, max_tensor_bytes)
        decoded.append(tensor)
        offset += used
    if offset != len(binary):
        raise ProtocolError(
            f"{len(binary)} bytes follow the JSON header but the inputs' binary_data_size add up to {offset}"
        )
    binary_output = _flag(params.get("binary_data_output", False), "binary_data_output")
    outputs = request.get("outputs")
    if outputs:
        if not isinstance(outputs, list):
            raise ProtocolError('"outputs" must be a list of {"name", "parameters"}')
        outputs = tuple(_decode_output(spec, binary_output) for spec in outputs)
        names = [out.name for out in outputs]
        if len(set(names)) != len(names):  # each copy would be serialised again: a cheap request, a huge answer
            raise ProtocolError(f'"outputs" names an output more than once ({len(names)} entries); name each once')
    else:
        outputs = None  # absent or empty: every output
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError('"id" must be a string: the answer carries it back as given')
    return InferRequest(request_id, tuple(decoded), outputs, binary_output)


_HEADER_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and not 5,000 of them (int() would raise)


def parse_header_length(value: str) -> int:
    """The Inference-Header-Content-Length header as a byte count; `ProtocolError` 400 if it is not one.

    int() alone is not enough: it takes "²" and " 7 ", and raises ValueError past Python's
    4,300-digit limit for int <- str."""
    if not _HEADER_DIGITS.fullmatch(value):
        raise ProtocolError(
            f"Inference-Header-Content-Length {_brief_text(value)} is not a number "
            "(1 to 18 ASCII digits: the JSON header's length in bytes)"
        )
    return int(value)


def _brief_text(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _decode_input(spec, binary: memoryview | bytes, offset: int, max_bytes: Optional[int]) -> tuple[InputTensor, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError('every input needs a "name", "shape", "datatype" and "data"')
    name = spec["name"]
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(s) is int and 0 <= s < 2**63 for s in shape)
    ):
        raise ProtocolError(
            f"input {_brief(name)}: shape must be a list of at most {MAX_RANK} non-negative integers "
            f"below 2^63 (int64, as in the protocol), not {_brief(shape)}"
        )
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # a dict or list is unhashable: 500 before
        known = ", ".join(DATATYPES)
        raise ProtocolError(f"input {_brief(name)}: datatype {_brief(datatype)} is not supported; use one of {known}")
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    extent = math.prod(max(s, 1) for s in shape) * dtype.itemsize  # also bounds shapes like [0, 2**40, 2**40]
    if max_bytes is not None and extent > max_bytes:
        raise ProtocolError(
            f"input {name!r}: shape {shape[:8]} of {datatype} would take {extent:,} bytes, more than "
            f"the {max_bytes:,}-byte limit (--max-body-bytes)",
            413 if count else 400,
        )
    size = _object(spec.get("parameters"), f"input {name!r} parameters").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise ProtocolError(f"input {_brief(name)}: binary_data_size must be a byte count, not {_brief(size)}")
        if size != count * dtype.itemsize:
            raise ProtocolError(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the end of the body")
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return InputTensor(name, datatype, array), size
    if "data" not in spec:
        raise ProtocolError(f'input {name!r} has neither "data" nor parameters.binary_data_size')
    return InputTensor(name, datatype, _from_json(spec["data"], dtype, shape, name, datatype)), 0


def _from_json(data, dtype: np.dtype, shape: list, name: str, datatype: str) -> np.ndarray:
    count = math.prod(shape)
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise ProtocolError(f"input {name!r}: data is not a regular (flat or nested) array of numbers") from None
    if values.size != count:
        raise ProtocolError(f"input {name!r}: shape {shape} needs {count} values, data has {values.size}")
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    if values.dtype.kind not in _JSON_KINDS[dtype.kind]:
        example = repr(_first_of_the_wrong_kind(values, dtype))[:40]
        raise ProtocolError(f"input {name!r}: data holds {example}, not {datatype} numbers")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            raise ProtocolError(f"input {name!r}: values {low}..{high} do not fit {datatype} ({info.min}..{info.max})")
    return values.astype(dtype, copy=False).reshape(shape)


def _decode_output(spec, binary_default: bool) -> OutputRequest:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError('every requested output needs a "name"')
    params = _object(spec.get("parameters"), f"output {spec['name']!r} parameters")
    binary = _flag(params.get("binary_data", binary_default), "binary_data")
    k = params.get("classification", 0)
    if type(k) is not int or k < 0:
        raise ProtocolError(
            f"output {_brief(spec['name'])}: classification must be a count of classes, not {_brief(k)}"
        )
    return OutputRequest(spec["name"], binary, k)


def _brief(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: an error message must not echo a megabyte back."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than int -> str allows (4,300)
        return "<a number too long to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_of_the_wrong_kind(values: np.ndarray, dtype: np.dtype):
    """The first value that keeps `values` from being `dtype` numbers (the array's kind alone says
    only "object" for an integer beyond 64 bits, or "float" for one 0.5 among whole numbers)."""
    for v in values.flat:
        v = v.item() if isinstance(v, np.generic) else v
        if dtype.kind == "b":
            wrong = not isinstance(v, bool)
        else:
            fraction = isinstance(v, float) and dtype.kind in "iu" and not v.is_integer()
            huge = isinstance(v, int) and not -(2**63) <= v < 2**64
            wrong = isinstance(v, bool) or not isinstance(v, (int, float)) or fraction or huge
        if wrong:
            return v
    return values.flat[0]


def json_object(data: bytes, what: str, form: str) -> dict:
    """`data` parsed as a JSON object, or a 400 saying what was wrong with it and to send `form`."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what} is not valid JSON ({exc}); send {form}") from None
    except RecursionError:
        raise ProtocolError(f"{what}'s JSON is nested too deeply; send {form}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object: send {form}")
    return value


def _object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be true or false, not {_brief(value)}")
    return value


def check_input(
    request: InferRequest, name: str, datatype: str, shape: Sequence[Optional[int]], max_rows: Optional[int] = None
) -> np.ndarray:
    """The one input a single-input model takes, checked against `shape` (None: any size).

    max_rows: the most rows (first axis) one request may send; more raise 413, as Triton refuses
    a batch above max_batch_size.
    """
    if len(request.inputs) != 1:
        names = ", ".join(repr(t.name) for t in request.inputs)
        raise ProtocolError(f"the model takes one input {name!r}; the request sends {len(request.inputs)} ({names})")
    tensor = request.inputs[0]
    if tensor.name != name:
        raise ProtocolError(f"unknown input {tensor.name!r}: the model's input is {name!r}")
    if tensor.datatype != datatype:
        raise ProtocolError(f"input {name!r}: datatype {tensor.datatype} does not match the model's {datatype}")
    actual = tensor.array.shape
    wanted = "[" + ", ".join("-1" if s is None else str(s) for s in shape) + "]"
    if len(actual) != len(shape) or any(s is not None and s != a for s, a in zip(shape, actual)):
        raise ProtocolError(f"input {name!r}: shape {list(actual)} does not match the model's {wanted}")
    if actual[0] == 0:
        raise ProtocolError(f"input {name!r}: the batch is empty (shape {list(actual)})")
    if max_rows is not None and actual[0] > max_rows:
        raise ProtocolError(
            f"input {name!r}: {actual[0]:,} rows are more than the {max_rows:,} one request may send "
            "(--max-request-rows); split the batch",
            413,
        )
    return tensor.array


# -- responses -----------------------------------------------------------------------------
def encode_response(
    model_name: str, model_version: str, request_id: Optional[str], outputs: Sequence[OutputTensor]
) -> tuple[bytes, Optional[int]]:
    """The response body and, when any output is binary, the JSON header's length."""
    described = []
    blobs = []
    for out in outputs:
        array = out.array
        datatype = out.datatype or ("BYTES" if array.dtype == object else datatype_of(array.dtype))
        entry = {"name": out.name, "datatype": datatype, "shape": list(array.shape)}
        if out.binary:
            blob = (
                serialize_bytes(array)
                if datatype == "BYTES"
                else array.astype(DATATYPES[datatype], copy=False).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [b.decode("utf-8", "replace") for b in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        described.append(entry)
    response = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = described
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor wire format: each element as a 4-byte little-endian length, then its bytes."""
    parts = []
    for item in array.ravel():
        item = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(item)))
        parts.append(item)
    return b"".join(parts)


def classification(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """(N, classes) -> (N, k) object array of b"score:index:label", best first (Triton's format)."""

    indices, scores = top_k(probabilities, k)
    out = np.empty(indices.shape, dtype=object)
    for r in range(indices.shape[0]):
        for c in range(indices.shape[1]):
            i = int(indices[r, c])
            out[r, c] = f"{float(scores[r, c]):f}:{i}:{labels[i]}".encode()
    return out


# -- bodies --------------------------------------------------------------------------------
def decompress(body: bytes, encoding: Optional[str], limit: int) -> bytes:
    """Undo a gzip or deflate Content-Encoding, refusing results over `limit` bytes (413)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none", 415)
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body cannot be decompressed ({exc})") from None
    if len(out) > limit:
        raise ProtocolError(f"the decompressed body is more than the {limit:,}-byte limit (--max-body-bytes)", 413)
    if not inflater.eof:
        raise ProtocolError(f"the {encoding} body is truncated")
    if inflater.unused_data:
        raise ProtocolError(f"the {encoding} body has bytes after its end (several gzip members?); send one stream")
    return out


def multipart_file(body: bytes, content_type: str, fields: Sequence[str] = ("image", "file")) -> bytes:
    """The content of a multipart/form-data field: the first of `fields`, else the first file."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise ProtocolError("multipart/form-data without a boundary; let the HTTP client build the form")
    parts = {}
    first_file = None
    for chunk in (b"\r\n" + body).split(b"\r\n--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = ""
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value
        name = _disposition_param(disposition, "name")
        if name is not None:
            parts.setdefault(name, content)
        if first_file is None and _disposition_param(disposition, "filename") is not None:
            first_file = content
    for field in fields:
        if field in parts:
            return parts[field]
    if first_file is not None:
        return first_file
    raise ProtocolError(f"the form has no {' or '.join(repr(f) for f in fields)} field and no file")


def _disposition_param(disposition: str, key: str) -> Optional[str]:
    for param in disposition.split(";")[1:]:
        k, _, v = param.strip().partition("=")
        if k.strip().lower() == key:
            return v.strip().strip('"')
    return None
