"""Graph rewrites: a zero Pad folds into the pool or conv after it only where outputs stay equal."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.export_rewrites import GraphIndex, attribute, fold_channel_permutations, fold_zero_pads, simplify

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SPATIAL = [0, 0, 1, 1, 0, 0, 1, 1]  # N, C, H, W begins then ends: one row/column each side


def _model(nodes, initializers=(), outputs=("y",)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 9])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * 4) for name in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _pads(values=SPATIAL, value=None):
    inits = [numpy_helper.from_array(np.array(values, dtype=np.int64), "pads")]
    inputs = ["x_in", "pads"]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, dtype=np.float32), "value"))
        inputs.append("value")
    return helper.make_node("Pad", inputs, ["padded"], mode="constant"), inits


def _relu_pad_pool(pool="MaxPool", first="Relu", pads=SPATIAL, value=None, **pool_attrs):
    pad, inits = _pads(pads, value)
    nodes = [
        helper.make_node(first, ["x"], ["x_in"]),
        pad,
        helper.make_node(pool, ["padded"], ["y"], kernel_shape=[3, 3], strides=[2, 2], **pool_attrs),
    ]
    return _model(nodes, inits)


def _outputs(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _ops(model):
    return [node.op_type for node in model.graph.node]


def _attr(model, op, name):
    node = next(n for n in model.graph.node if n.op_type == op)
    return next(list(a.ints) for a in node.attribute if a.name == name)


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(2, 3, 9, 9)).astype(np.float32)


def _fold_and_compare(model, x):
    before = _outputs(model, x)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    count = fold_zero_pads(folded)
    onnx.checker.check_model(folded)
    after = _outputs(folded, x)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    return count, folded


def test_a_zero_pad_after_a_relu_becomes_the_max_pools_own_padding(x):
    count, folded = _fold_and_compare(_relu_pad_pool(), x)

    assert count == 1
    assert _ops(folded) == ["Relu", "MaxPool"]
    assert _attr(folded, "MaxPool", "pads") == [1, 1, 1, 1]
    assert [init.name for init in folded.graph.initializer] == []  # the Pad's constants went with it


def test_a_zero_pad_before_a_conv_adds_to_the_convs_own_padding(x):
    pad, inits = _pads([0, 0, 2, 1, 0, 0, 0, 1])
    weights = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    inits.append(numpy_helper.from_array(weights, "w"))
    model = _model(
        [
            helper.make_node("Identity", ["x"], ["x_in"]),
            pad,
            helper.make_node("Conv", ["padded", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        ],
        inits,
    )

    before = _outputs(model, x)[0]
    assert fold_zero_pads(model) == 1
    np.testing.assert_allclose(_outputs(model, x)[0], before, rtol=1e-6, atol=1e-6)
    assert _ops(model) == ["Identity", "Conv"]
    assert _attr(model, "Conv", "pads") == [3, 2, 1, 2]


def test_an_average_pool_that_counts_padded_cells_takes_the_pad(x):
    count, folded = _fold_and_compare(_relu_pad_pool("AveragePool", count_include_pad=1), x)
    assert count == 1 and "Pad" not in _ops(folded)


@pytest.mark.parametrize(
    "case, model",
    [
        ("max pool over values that may be negative", _relu_pad_pool(first="Identity")),
        ("average pool that ignores padded cells", _relu_pad_pool("AveragePool")),
        ("pad value other than zero", _relu_pad_pool(value=0.5)),
        ("pad on the channel axis", _relu_pad_pool(pads=[0, 1, 1, 1, 0, 0, 1, 1])),
        ("max pool window that could be all padding", _relu_pad_pool(pads=[0, 0, 3, 3, 0, 0, 0, 0])),
        ("max pool with ceil mode", _relu_pad_pool(ceil_mode=1)),
        ("pool with automatic padding", _relu_pad_pool(auto_pad="SAME_UPPER")),
        ("dilated max pool, whose window can skip the image", _relu_pad_pool(dilations=[2, 2])),
    ],
)
def test_a_pad_stays_where_folding_could_change_the_result(case, model, x):
    before = [node.SerializeToString() for node in model.graph.node]

    assert fold_zero_pads(model) == 0, case
    assert [node.SerializeToString() for node in model.graph.node] == before


def test_a_pad_read_by_two_nodes_or_returned_as_an_output_stays(x):
    shared = _relu_pad_pool()
    shared.graph.node.append(helper.make_node("Relu", ["padded"], ["also"]))
    shared.graph.output.append(helper.make_tensor_value_info("also", TensorProto.FLOAT, [None] * 4))
    returned = _relu_pad_pool()
    returned.graph.output.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, [None] * 4))

    assert fold_zero_pads(shared) == 0
    assert fold_zero_pads(returned) == 0


# --- channel permutations -----------------------------------------------------------------------


def _swap_then_conv(matrix, bias, follower_pads=(1, 1, 1, 1), extra_user=False):
    rng = np.random.default_rng(2)
    channels = len(matrix)
    inits = [
        numpy_helper.from_array(np.asarray(matrix, np.float32).reshape(channels, channels, 1, 1), "swap_w"),
        numpy_helper.from_array(np.asarray(bias, np.float32), "swap_b"),
        numpy_helper.from_array(rng.normal(size=(5, channels, 3, 3)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "swap_w", "swap_b"], ["swapped"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["swapped", "w"], ["y"], kernel_shape=[3, 3], pads=list(follower_pads)),
    ]
    outputs = ["y"]
    if extra_user:
        nodes.append(helper.make_node("Relu", ["swapped"], ["z"]))
        outputs.append("z")
    return _model(nodes, inits, outputs)


RGB_TO_BGR = [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
CAFFE_SHIFT = [-103.939, -116.779, -123.68]


def test_a_channel_swap_and_shift_becomes_an_add_and_the_next_convs_weights_take_the_swap(x):
    model = _swap_then_conv(RGB_TO_BGR, CAFFE_SHIFT)
    before = _outputs(model, x * 100)[0]

    assert fold_channel_permutations(model) == 1
    onnx.checker.check_model(model)
    assert _ops(model) == ["Add", "Conv"]
    np.testing.assert_allclose(_outputs(model, x * 100)[0], before, rtol=1e-5, atol=1e-3)
    shift = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name.endswith("/shift")))
    assert shift.shape == (1, 3, 9, 9)  # full image size: a same-shape Add, no slow channel broadcast
    np.testing.assert_allclose(shift[0, :, 4, 4], CAFFE_SHIFT[::-1], rtol=1e-6)
    assert np.all(shift == shift[:, :, :1, :1])


def test_without_a_known_image_size_the_shift_is_one_value_per_channel(x):
    model = _swap_then_conv(RGB_TO_BGR, CAFFE_SHIFT)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    before = _outputs(model, x)[0]

    assert fold_channel_permutations(model) == 1
    shift = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name.endswith("/shift")))
    assert shift.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(_outputs(model, x)[0], before, rtol=1e-5, atol=1e-4)


def test_a_scaled_permutation_also_keeps_a_mul(x):
    model = _swap_then_conv([[0, 2.0, 0], [0, 0, 0.5], [-1.0, 0, 0]], [1.0, 2.0, 3.0])
    before = _outputs(model, x)[0]

    assert fold_channel_permutations(model) == 1
    assert _ops(model) == ["Mul", "Add", "Conv"]
    np.testing.assert_allclose(_outputs(model, x)[0], before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case, model",
    [
        ("a 1x1 conv that mixes channels", _swap_then_conv([[1, 1, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])),
        ("two outputs from one input channel", _swap_then_conv([[1, 0, 0], [1, 0, 0], [0, 0, 1]], [0, 0, 0])),
        ("an output of zeros beside one that mixes", _swap_then_conv([[0, 0, 0], [0, 1, 1], [0, 0, 1]], [0, 0, 0])),
        ("the swapped tensor is read elsewhere too", _swap_then_conv(RGB_TO_BGR, CAFFE_SHIFT, extra_user=True)),
    ],
)
def test_a_1x1_conv_stays_where_it_is_more_than_a_channel_permutation(case, model):
    assert fold_channel_permutations(model) == 0, case
    assert _ops(model)[0] == "Conv"


def test_simplify_runs_every_rewrite_and_counts_them(x):
    model = _relu_pad_pool()
    assert simplify(model) == {"zero pads folded": 1, "channel permutations folded": 0}


def test_a_pad_whose_constants_a_caller_can_override_stays():
    model = _relu_pad_pool()
    model.graph.input.append(helper.make_tensor_value_info("pads", TensorProto.INT64, [8]))

    assert fold_zero_pads(model) == 0
    assert "Pad" in _ops(model)


def _read_in_a_branch(model, tensor):
    """Add an If node whose branches read `tensor` from the outer graph."""
    branch = helper.make_graph(
        [helper.make_node("Identity", [tensor], ["branch_out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    return model


def test_tensors_a_subgraph_reads_are_left_alone(x):
    padded = _read_in_a_branch(_relu_pad_pool(), "padded")
    swapped = _read_in_a_branch(_swap_then_conv(RGB_TO_BGR, CAFFE_SHIFT), "swapped")
    weights_read = _read_in_a_branch(_swap_then_conv(RGB_TO_BGR, CAFFE_SHIFT), "w")

    assert fold_zero_pads(padded) == 0
    assert fold_channel_permutations(swapped) == 0
    assert fold_channel_permutations(weights_read) == 0


def test_the_shift_keeps_the_models_float_type():
    model = _swap_then_conv(RGB_TO_BGR, CAFFE_SHIFT)
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))

    assert fold_channel_permutations(model) == 1
    shift = next(i for i in model.graph.initializer if i.name.endswith("/shift"))
    assert numpy_helper.to_array(shift).dtype == np.float64


def test_attribute_reads_each_onnx_type_as_its_python_value_or_the_default():
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 0, 0], auto_pad="NOTSET", alpha=0.5)
    assert attribute(node, "group") == 2
    assert attribute(node, "pads") == [1, 1, 0, 0]
    assert attribute(node, "auto_pad") == "NOTSET"  # a str, not bytes
    assert attribute(node, "alpha") == 0.5
    assert attribute(node, "strides") is None and attribute(node, "strides", [1, 1]) == [1, 1]


def test_the_graph_index_knows_who_writes_and_how_often_each_tensor_is_read():
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w"], ["a"], name="conv_a"),
            helper.make_node("Conv", ["r", "w"], ["y"], name="conv_b"),
            helper.make_node("Add", ["a", "a"], ["z"], name="add"),
        ],
        [w],
        outputs=("y", "z"),
    )
    index = GraphIndex(model.graph)
    assert index.producers["r"].name == "relu" and "x" not in index.producers
    assert (index.uses("r"), index.uses("w"), index.uses("a"), index.uses("y")) == (2, 2, 2, 0)
    assert index.only_user("r") is None  # two readers
    assert index.only_user("x").name == "relu"
    assert "w" in index.constants and index.only_user("y") is None  # a graph output is pinned
