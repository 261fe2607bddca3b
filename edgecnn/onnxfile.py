"""Model files are input too: an ONNX file may only read external data from inside its own folder.

An ONNX tensor can keep its bytes in another file (`external_data` with a `location`). A model
copied from elsewhere could point that at `../../etc/shadow`, an absolute path, or a symlink out of
its folder, and a command that loads it would read that file. onnxruntime 1.32 refuses all three
(1.23 followed `..`); edgecnn checks every location itself, with the file's real path, before any
session is made, so the refusal holds whatever onnxruntime build a device has and says in one line
which tensor points where.

The check walks the protobuf wire format directly (the device path has onnxruntime but not the
`onnx` package), skipping tensor bytes without copying them: 16–50 ms for ResNet50 (25 M weights), next to a
session that takes ten times that to create.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from edgecnn.errors import ModelError

# field numbers of onnx.proto3 that can lead to a TensorProto
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_MAX_DEPTH = 64  # subgraphs nested deeper than this are not a model anyone exported


def check_external_data(path: str | os.PathLike) -> list[Path]:
    """The external data files `path` reads, each checked to lie inside the model's folder (after
    resolving symlinks); a one-line ModelError for the first that does not, or is missing."""
    path = Path(path)
    folder = path.resolve().parent
    found: dict[Path, None] = {}  # in order, each file once
    failure: ModelError | None = None
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                for name, location in _external_locations(view):
                    found[_checked(path, folder, name, location)] = None
            # A fresh error, raised once the file is closed: the parser's own keeps its slices of
            # the mapping alive in its traceback, and closing the mapping would then fail
            # ("exported pointers exist") in place of the reason.
            except ModelError as exc:
                failure = ModelError(str(exc))
            except ValueError as exc:
                failure = ModelError(f"{path}: not a readable ONNX model ({exc})")
            finally:
                view.release()
    except (ValueError, OSError) as exc:  # empty file (mmap), unreadable
        raise ModelError(f"{path}: not a readable ONNX model ({exc})") from None
    if failure is not None:
        raise failure
    return list(found)


def _checked(model: Path, folder: Path, tensor: str, location: str) -> Path:
    what = f"{model}: tensor {tensor!r} keeps its data in {location!r}"
    if not location or "\0" in location:
        raise ModelError(f"{what}: not a file name; re-export the model")
    if os.path.isabs(location) or Path(location).drive:
        raise ModelError(f"{what}, an absolute path; a model may only read files inside its own folder")
    target = (folder / location).resolve()
    if target != folder and folder not in target.parents:
        raise ModelError(
            f"{what}, which resolves to {target}, outside the model's folder {folder}; refusing to load it"
        )
    if not target.is_file():
        raise ModelError(f"{what}, which does not exist; copy it beside the model")
    return target


def _external_locations(buf):
    """(tensor name, location) of every tensor with external data in a serialized ModelProto."""
    for field, value in _fields(buf):
        if field == _MODEL_GRAPH and isinstance(value, memoryview):
            yield from _graph(value, 0)


def _graph(buf, depth: int):
    if depth > _MAX_DEPTH:
        raise ModelError(f"subgraphs nested more than {_MAX_DEPTH} deep; not a model edgecnn loads")
    for field, value in _fields(buf):
        if not isinstance(value, memoryview):
            continue
        if field == _GRAPH_INITIALIZER:
            yield from _tensor(value)
        elif field == _GRAPH_SPARSE_INITIALIZER:
            yield from _sparse(value)
        elif field == _GRAPH_NODE:
            for f, attribute in _fields(value):
                if f == _NODE_ATTRIBUTE and isinstance(attribute, memoryview):
                    yield from _attribute(attribute, depth)


def _attribute(buf, depth: int):
    for field, value in _fields(buf):
        if not isinstance(value, memoryview):
            continue
        if field in (_ATTR_TENSOR, _ATTR_TENSORS):
            yield from _tensor(value)
        elif field in (_ATTR_GRAPH, _ATTR_GRAPHS):
            yield from _graph(value, depth + 1)
        elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
            yield from _sparse(value)


def _sparse(buf):
    for field, value in _fields(buf):
        if field in (_SPARSE_VALUES, _SPARSE_INDICES) and isinstance(value, memoryview):
            yield from _tensor(value)


def _tensor(buf):
    name, location = "", None
    for field, value in _fields(buf):
        if field == _TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif field == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = dict(_fields(value))
            if bytes(entry.get(_ENTRY_KEY, b"")) == b"location":
                location = bytes(entry.get(_ENTRY_VALUE, b"")).decode("utf-8", "replace")
    if location is not None:
        yield name, location


def _fields(buf):
    """(field number, value) of each field of one protobuf message: ints for varints and fixed
    fields, memoryviews (no copy) for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("a field runs past the end of the file (truncated?)")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {pos}: not an ONNX file")
        if pos > end:
            raise ValueError("a field runs past the end of the file (truncated?)")
        yield field, value


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a malformed number in the file (truncated?)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
