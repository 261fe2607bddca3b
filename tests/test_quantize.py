"""Which nodes INT8 quantization leaves in float, read from the FP32 graph (no TensorFlow needed)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.quantize import _graph_facts

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _save(tmp_path, nodes, named=True):
    if not named:
        for node in nodes:
            node.name = ""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(np.full((1, 3, 1, 1), -100.0, np.float32), "mean"),
            numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=(2, 7, 3, 3)).astype(np.float32), "w2"),
        ],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _network():
    """image -> Cast -> Add(mean) -> Conv -> Relu, and a MaxPool of the preprocessed image
    concatenated with it -> Conv -> GlobalAveragePool -> Flatten -> Softmax."""
    return [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Add", ["x", "mean"], ["shifted"], name="shift"),
        helper.make_node("Conv", ["shifted", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["shifted"], ["skip"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="skip_pool"),
        helper.make_node("Concat", ["r1", "skip"], ["both"], axis=1, name="concat"),
        helper.make_node("Conv", ["both", "w2"], ["c2"], kernel_shape=[3, 3], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Softmax", ["f"], ["probabilities"], name="softmax"),
    ]


def test_the_input_path_is_the_preprocessing_that_feeds_the_first_conv(tmp_path):
    input_name, softmax, input_path = _graph_facts(_save(tmp_path, _network()))

    assert input_name == "image"
    assert softmax == ["softmax"]
    assert input_path == ["cast", "shift"]  # not the network's own pool of the same tensor


def test_unnamed_nodes_are_never_excluded_by_an_empty_name(tmp_path):
    _, softmax, input_path = _graph_facts(_save(tmp_path, _network(), named=False))

    assert softmax == [] and input_path == []
