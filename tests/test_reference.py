"""The NumPy reference ops: hand-computed examples, and agreement with Keras layer by layer."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgecnn import reference as ref

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

X3 = np.arange(1, 10, dtype=float).reshape(1, 3, 3, 1)  # [[1 2 3], [4 5 6], [7 8 9]]
K2 = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- 1-D convolution -------------------------------------------------------------------------


def test_conv1d_slides_the_kernel_without_flipping_it():
    x, w = [1, 2, 3, 4, 5], [1, 0, -1]
    np.testing.assert_array_equal(ref.conv1d(x, w), [-2, -2, -2])  # x[i] - x[i+2]
    np.testing.assert_array_equal(np.convolve(x, w, "valid"), [2, 2, 2])  # the flipped, textbook one


def test_conv1d_stride_keeps_every_stride_th_output():
    np.testing.assert_array_equal(ref.conv1d([1, 2, 3, 4, 5, 6], [1, 1], stride=2), [3, 7, 11])


@pytest.mark.parametrize("n, k", [(1, 1), (5, 1), (5, 5), (8, 3), (17, 4), (64, 7)])
def test_conv1d_equals_numpy_correlate_valid(n, k):
    rng = np.random.default_rng(n * 100 + k)
    x, w = rng.normal(size=n), rng.normal(size=k)
    out = ref.conv1d(x, w)
    assert out.shape == (n - k + 1,)
    np.testing.assert_allclose(out, np.correlate(x, w, mode="valid"), rtol=1e-12, atol=1e-12)


# --- 2-D convolution -------------------------------------------------------------------------


def test_conv2d_valid_on_a_3x3_image_with_a_2x2_kernel():
    out = ref.conv2d(X3, K2)
    # top-left: 1*1 + 2*2 + 4*3 + 5*4 = 37, and so on one cell right / down
    np.testing.assert_array_equal(out[0, :, :, 0], [[37, 47], [67, 77]])


def test_conv2d_same_pads_the_extra_cell_on_the_bottom_right_and_adds_bias():
    out = ref.conv2d(X3, K2, bias=[0.5], padding="same")
    assert out.shape == (1, 3, 3, 1)
    # the last row/column see zeros below/right of the image: 3*1 + 6*3 = 21, 7*1 + 8*2 = 23, 9*1 = 9
    np.testing.assert_array_equal(out[0, :, :, 0], [[37.5, 47.5, 21.5], [67.5, 77.5, 33.5], [23.5, 26.5, 9.5]])


def test_conv2d_sums_over_input_channels_and_gives_one_map_per_filter():
    x = np.concatenate([X3, 10 * X3], axis=-1)  # two channels
    kernel = np.zeros((1, 1, 2, 3))
    kernel[0, 0, :, 0] = [1, 0]  # channel 0
    kernel[0, 0, :, 1] = [0, 1]  # channel 1
    kernel[0, 0, :, 2] = [1, 1]  # their sum
    out = ref.conv2d(x, kernel)
    np.testing.assert_array_equal(out[..., 0], X3[..., 0])
    np.testing.assert_array_equal(out[..., 1], 10 * X3[..., 0])
    np.testing.assert_array_equal(out[..., 2], 11 * X3[..., 0])


@pytest.mark.parametrize("size", [(7, 9), (8, 6)])
@pytest.mark.parametrize("kernel_size", [(1, 1), (3, 3), (5, 5), (3, 5), (2, 1)])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv2d_matches_keras_conv2d(keras, size, kernel_size, strides, padding):
    c_in, c_out = 3, 4
    x = _images((2, *size, c_in), seed=1)
    kernel = _images((*kernel_size, c_in, c_out), seed=2)
    bias = _images((c_out,), seed=3)
    layer = keras.layers.Conv2D(
        c_out, kernel_size, strides=strides, padding=padding, activation=None, data_format="channels_last"
    )
    layer.build(x.shape)
    layer.set_weights([kernel, bias])
    expected = np.asarray(layer(x))
    out = ref.conv2d(x, kernel, bias, strides=strides, padding=padding)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "size, k, s, padding, expected",
    [
        (7, 3, 1, "valid", 5),
        (7, 3, 2, "valid", 3),
        (8, 3, 2, "valid", 3),
        (7, 7, 2, "valid", 1),
        (7, 3, 1, "same", 7),
        (7, 3, 2, "same", 4),
        (8, 5, 2, "same", 4),
        (1, 5, 3, "same", 1),
    ],
)
def test_output_size_follows_tensorflow(size, k, s, padding, expected):
    assert ref.output_size(size, k, s, padding) == expected


# --- pooling ---------------------------------------------------------------------------------


def test_max_pool_same_never_lets_padding_win():
    x = -X3  # all negative: a zero pad would win if it were counted
    np.testing.assert_array_equal(ref.max_pool2d(x, 2, padding="same")[0, :, :, 0], [[-1, -3], [-7, -9]])
    np.testing.assert_array_equal(ref.max_pool2d(X3, 2)[0, :, :, 0], [[5]])


def test_avg_pool_same_leaves_padded_cells_out_of_the_mean():
    out = ref.avg_pool2d(X3, 2, padding="same")
    # windows: {1,2,4,5}, {3,6}, {7,8}, {9}
    np.testing.assert_array_equal(out[0, :, :, 0], [[3.0, 4.5], [7.5, 9.0]])


def test_pooling_strides_default_to_the_pool_size():
    x = _images((1, 6, 6, 2))
    np.testing.assert_array_equal(ref.max_pool2d(x, 3), ref.max_pool2d(x, 3, strides=3))
    np.testing.assert_array_equal(ref.avg_pool2d(x, (2, 3)), ref.avg_pool2d(x, (2, 3), strides=(2, 3)))


@pytest.mark.parametrize("pool_size", [2, 3])
@pytest.mark.parametrize("strides", [None, 1, 2])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_matches_keras(keras, pool_size, strides, padding, kind):
    x = _images((2, 7, 9, 3), seed=4)
    if kind == "max":
        layer, ours = keras.layers.MaxPooling2D(pool_size, strides, padding), ref.max_pool2d
    else:
        layer, ours = keras.layers.AveragePooling2D(pool_size, strides, padding), ref.avg_pool2d
    expected = np.asarray(layer(x))
    out = ours(x, pool_size, strides=strides, padding=padding)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --- small helpers ---------------------------------------------------------------------------


def test_dense_flatten_relu_softmax():
    x = np.arange(6.0).reshape(1, 1, 2, 3)  # flattened in NHWC order: 0..5
    np.testing.assert_array_equal(ref.flatten(x), [[0, 1, 2, 3, 4, 5]])
    kernel = np.stack([np.ones(6), -np.ones(6)], axis=1)
    logits = ref.dense(ref.flatten(x), kernel, bias=[1.0, 0.0])
    np.testing.assert_array_equal(logits, [[16.0, -15.0]])
    np.testing.assert_array_equal(ref.relu(logits), [[16.0, 0.0]])
    np.testing.assert_allclose(ref.softmax([[0.0, np.log(3.0)]]), [[0.25, 0.75]])
    np.testing.assert_allclose(ref.softmax([[1000.0, 1000.0]]), [[0.5, 0.5]])  # no overflow


# --- argument errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ref.conv1d(np.ones((2, 3)), [1.0]), "conv1d expects 1-D x and w"),
        (lambda: ref.conv1d([1.0, 2.0], [1.0, 1.0, 1.0]), "kernel length 3 must be between 1 and the input length 2"),
        (lambda: ref.conv1d([1.0, 2.0], [1.0], stride=0), "stride must be a positive int"),
        (
            lambda: ref.conv2d(np.ones((3, 3, 1)), K2),
            r"conv2d input x must be 4-D \(N, H, W, C_in\), got shape \(3, 3, 1\)",
        ),
        (lambda: ref.conv2d(X3, np.ones((2, 2, 1))), r"conv2d kernel must be 4-D \(kh, kw, C_in, C_out\)"),
        (lambda: ref.conv2d(X3, np.ones((2, 2, 3, 1))), "channel mismatch: x has 1 channels, kernel expects 3"),
        (lambda: ref.conv2d(X3, K2, bias=[1.0, 2.0]), r"bias must have shape \(1,\), got \(2,\)"),
        (lambda: ref.conv2d(X3, K2, padding="full"), "unknown padding 'full': use one of valid, same"),
        (lambda: ref.conv2d(X3, np.ones((4, 4, 1, 1))), "window \\(4, 4\\) is larger than the input"),
        (lambda: ref.conv2d(X3, K2, strides=(1, 2, 3)), "strides must be a positive int or a pair"),
        (lambda: ref.max_pool2d(X3[0], 2), r"pooling input x must be 4-D \(N, H, W, C\)"),
        (lambda: ref.avg_pool2d(X3, 2, padding="SAME"), "unknown padding 'SAME'"),
        (lambda: ref.avg_pool2d(X3, 0), "pool_size must be a positive int"),
        (
            lambda: ref.dense(np.ones((2, 3)), np.ones((4, 5))),
            "dense size mismatch: x has 3 features, kernel expects 4",
        ),
    ],
)
def test_bad_arguments_raise_value_error_saying_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()
