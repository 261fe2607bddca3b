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


def test_dequantize_scales_each_channel_along_its_axis():
    from edgecnn.sensitivity import dequantize

    q = np.array([[[[-2]], [[4]]]], np.int8).repeat(3, axis=0)  # (3 out channels, 2, 1, 1)
    out = dequantize(q, np.array([0.5, 1.0, 2.0], np.float32), np.zeros(3, np.int8), axis=0)

    assert out.dtype == np.float32 and out.shape == q.shape
    assert out[:, 0, 0, 0].tolist() == [-1.0, -2.0, -4.0] and out[:, 1, 0, 0].tolist() == [2.0, 4.0, 8.0]
    assert dequantize(np.array([10, 20], np.uint8), np.float32(0.1), np.uint8(10)).tolist() == pytest.approx([0.0, 1.0])


def test_each_quantized_conv_is_ranked_by_the_damage_it_does_alone(tmp_path):
    from edgecnn.quantize import Int8Config, quantize_int8
    from edgecnn.sensitivity import rank_layers

    images = np.random.default_rng(1).integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)  # the graph takes batch 1
    fp32 = _save(tmp_path, _network())
    int8 = quantize_int8(
        fp32,
        tmp_path / "m.int8.onnx",
        images,
        Int8Config(reduce_range=False, calibration_batch=1),
        keep_float=tmp_path / "f.onnx",
    )
    ranking = rank_layers(tmp_path / "f.onnx", int8, images, batch=1)

    assert {s.node for s in ranking if s.op_type == "Conv"} == {"conv1", "conv2"}
    assert not {s.node for s in ranking} & {
        "skip_pool",
        "flatten",
        "softmax",
    }  # data movement and float nodes are not ranked
    assert [s.sqnr_db for s in ranking] == sorted(s.sqnr_db for s in ranking)
    assert all(np.isfinite(s.sqnr_db) and s.sqnr_db > 10 for s in ranking)  # 8 bits: small but real noise
