"""Keras -> ONNX for `edgecnn export`: the conversion with preprocessing in the graph, the exact
graph rewrites (`edgecnn.export_rewrites`), onnxruntime's provider-independent folding, and edgecnn's
metadata written into the file. TensorFlow and tf2onnx are imported inside `convert` only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgecnn.errors import EdgecnnError, first_line, require
from edgecnn.export_rewrites import simplify
from edgecnn.metadata import ModelMetadata, attach_to_onnx

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 18  # per-channel QuantizeLinear needs 13; tf2onnx 1.17 writes up to 18


def convert(keras_model, meta: ModelMetadata, out_path: Path, opset: int = DEFAULT_OPSET, log=print) -> Path:
    """Keras model (raw-pixel float input, NHWC) -> ONNX at `out_path` with `image`/`probabilities`.

    A tf.function wraps the model: casts the input (uint8 or float32) to float, transposes
    NCHW input when asked, calls the model in inference mode. BatchNorm and constants are then
    folded by onnxruntime's basic (provider-independent) graph optimizations, and zero `Pad`
    nodes into the pooling or convolution after them and a channel-swapping 1x1 conv into the
    next conv's weights (`graph.simplify`), so that the INT8 variant made from this file stays
    in integers and skips a thin convolution over every pixel.
    """
    from edgecnn.tfimport import import_tensorflow

    tf = import_tensorflow()
    tf2onnx = require("tf2onnx", "train")

    h, w = meta.image_size
    c = meta.channels
    dtype = tf.uint8 if meta.input_dtype == "uint8" else tf.float32
    shape = [None, c, h, w] if meta.layout == "nchw" else [None, h, w, c]
    spec = (tf.TensorSpec(shape, dtype, name=meta.input_name),)

    @tf.function(input_signature=spec, autograph=False)
    def serving(image):
        x = tf.cast(image, tf.float32)
        if meta.layout == "nchw":
            x = tf.transpose(x, [0, 2, 3, 1])
        return {meta.output_name: keras_model(x, training=False)}

    try:
        proto = _from_function(tf2onnx, serving, spec, opset)
    except Exception as exc:
        raise EdgecnnError(f"tf2onnx could not convert the model: {_conversion_detail(exc)}") from None
    _rename_io(proto, meta.input_name, meta.output_name)
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        onnx.save(proto, str(raw))
        _fold(raw, out_path)
    rewrites = attach(out_path, meta.replace(variant="fp32"), rewrite=simplify)
    done = [f"{what}: {count}" for what, count in rewrites.items() if count]
    if done:
        log(f"graph rewrites (exact): {', '.join(done)}")
    return out_path


_TF2ONNX_CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"


def _from_function(tf2onnx, serving, spec, opset: int):
    """tf2onnx's conversion, first without its safety copies, then with them if that fails.

    By default tf2onnx deep-copies the whole graph, weights included, before each of its dozen
    optimizer passes so that it can skip a pass that fails: 9 of the 25 s ResNet50 takes. Its
    TF2ONNX_CATCH_ERRORS switch turns that off; should a pass then fail, the conversion runs again
    the careful way, so the result is never worse than tf2onnx's default.
    """
    previous = os.environ.get(_TF2ONNX_CATCH_ERRORS)
    os.environ[_TF2ONNX_CATCH_ERRORS] = "FALSE"
    try:
        return tf2onnx.convert.from_function(serving, input_signature=spec, opset=opset)[0]
    except Exception:
        pass
    finally:
        if previous is None:
            os.environ.pop(_TF2ONNX_CATCH_ERRORS, None)
        else:
            os.environ[_TF2ONNX_CATCH_ERRORS] = previous
    return tf2onnx.convert.from_function(serving, input_signature=spec, opset=opset)[0]


def _conversion_detail(exc: Exception) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "op" in line.lower() or "layer" in line.lower():
            return line.strip()[:300]
    return first_line(exc)[:300]


def _rename_io(proto, input_name: str, output_name: str) -> None:
    """Give the graph stable tensor names whatever tf2onnx chose."""
    renames = {proto.graph.input[0].name: input_name, proto.graph.output[0].name: output_name}
    renames = {a: b for a, b in renames.items() if a != b}
    if not renames:
        return
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames.get(value.name, value.name)


def _fold(src: Path, dst: Path) -> None:
    from edgecnn.runtime import import_onnxruntime

    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def attach(path: Path, meta: ModelMetadata, rewrite=None):
    """Write `meta` into the ONNX file at `path`, after `rewrite(proto)` if given; returns what rewrite returned."""
    import onnx

    proto = onnx.load(str(path))
    result = rewrite(proto) if rewrite is not None else None
    attach_to_onnx(proto, meta)
    onnx.save(proto, str(path))
    return result
