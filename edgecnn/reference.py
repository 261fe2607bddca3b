"""The seed's building blocks: classic CNN operations in plain NumPy, the oracle for layer semantics.

These are the operations a first CNN lesson teaches (1-D convolution, 2-D convolution with
many filters and channels, max and average pooling, dense, ReLU, softmax), written so that a
reader can check them against the textbook and against Keras. They define what "the same
computation" means: later stages may run them on a model's weights to double-check an
exported graph, and the tests pin them to `keras.layers.Conv2D` / `MaxPooling2D` /
`AveragePooling2D`.

Conventions follow TensorFlow/Keras: images are NHWC, kernels are (kh, kw, C_in, C_out),
"convolution" is cross-correlation (the kernel is not flipped), and ``padding="same"`` gives
``ceil(in / stride)`` outputs with the odd padded cell on the bottom/right. Every function is
pure (arrays in, a new float64 array out) and vectorized: windows come from
`sliding_window_view`, sums from `einsum`; there is no Python loop over output positions.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PADDINGS = ("valid", "same")


def conv1d(x, w, stride: int = 1) -> np.ndarray:
    """1-D "valid" convolution as deep-learning frameworks define it (cross-correlation).

    x: (n,) sequence; w: (k,) weights with k <= n. Output: (floor((n - k) / stride) + 1,),
    where ``out[i] = sum_j x[i * stride + j] * w[j]``. With stride 1 this equals
    ``np.correlate(x, w, mode="valid")``.
    """
    x, w = _float(x), _float(w)
    if x.ndim != 1 or w.ndim != 1:
        raise ValueError(f"conv1d expects 1-D x and w, got shapes {x.shape} and {w.shape}")
    if not 1 <= w.size <= x.size:
        raise ValueError(f"conv1d kernel length {w.size} must be between 1 and the input length {x.size}")
    stride = _pair(stride, "stride")[0]
    return sliding_window_view(x, w.size)[::stride] @ w


def conv2d(x, kernel, bias=None, strides=1, padding: str = "valid") -> np.ndarray:
    """2-D convolution of a batch of images with a bank of filters, like `keras.layers.Conv2D`.

    x: (N, H, W, C_in); kernel: (kh, kw, C_in, C_out); bias: (C_out,) or None;
    strides: int or (sh, sw); padding: "valid" or "same" (zeros, TensorFlow's split).
    Output: (N, H_out, W_out, C_out) with
    ``out[n, i, j, o] = bias[o] + sum_{a, b, c} xp[n, i*sh + a, j*sw + b, c] * kernel[a, b, c, o]``
    where xp is x after padding. No activation is applied.
    """
    x, kernel = _float(x), _float(kernel)
    _check_rank(x, 4, "conv2d input x", "(N, H, W, C_in)")
    _check_rank(kernel, 4, "conv2d kernel", "(kh, kw, C_in, C_out)")
    kh, kw, c_in, c_out = kernel.shape
    if x.shape[3] != c_in:
        raise ValueError(f"conv2d channel mismatch: x has {x.shape[3]} channels, kernel expects {c_in}")
    windows = _windows(x, (kh, kw), _pair(strides, "strides"), padding, fill=0.0)
    out = np.einsum("nhwcab,abco->nhwo", windows, kernel, optimize=True)
    if bias is not None:
        bias = _float(bias)
        if bias.shape != (c_out,):
            raise ValueError(f"conv2d bias must have shape ({c_out},), got {bias.shape}")
        out = out + bias
    return out


def max_pool2d(x, pool_size=2, strides=None, padding: str = "valid") -> np.ndarray:
    """Max pooling over (H, W) per channel, like `keras.layers.MaxPooling2D`.

    x: (N, H, W, C); pool_size and strides: int or pair, strides None means pool_size.
    Output: (N, H_out, W_out, C), sizes as in `conv2d`. With "same" the padded cells are
    -inf, so they never win.
    """
    windows = _pool_windows(x, pool_size, strides, padding, fill=-np.inf)
    return windows.max(axis=(-2, -1))


def avg_pool2d(x, pool_size=2, strides=None, padding: str = "valid") -> np.ndarray:
    """Average pooling over (H, W) per channel, like `keras.layers.AveragePooling2D`.

    x: (N, H, W, C); pool_size and strides: int or pair, strides None means pool_size.
    Output: (N, H_out, W_out, C). With "same" the padded cells are left out of the mean:
    each output divides by the number of real input cells in its window (as TensorFlow does).
    """
    x = _float(x)
    total = _pool_windows(x, pool_size, strides, padding, fill=0.0).sum(axis=(-2, -1))
    count = _pool_windows(np.ones_like(x[:1, ..., :1]), pool_size, strides, padding, fill=0.0)
    return total / count.sum(axis=(-2, -1))


def dense(x, kernel, bias=None) -> np.ndarray:
    """Fully connected layer: x (N, D) @ kernel (D, U) + bias (U,) -> (N, U), like `keras.layers.Dense`."""
    x, kernel = _float(x), _float(kernel)
    _check_rank(x, 2, "dense input x", "(N, D)")
    _check_rank(kernel, 2, "dense kernel", "(D, U)")
    if x.shape[1] != kernel.shape[0]:
        raise ValueError(f"dense size mismatch: x has {x.shape[1]} features, kernel expects {kernel.shape[0]}")
    out = x @ kernel
    return out if bias is None else out + _float(bias)


def flatten(x) -> np.ndarray:
    """(N, ...) -> (N, prod(...)) in row-major (NHWC) order, like `keras.layers.Flatten`."""
    x = _float(x)
    if x.ndim < 1:
        raise ValueError("flatten expects at least a batch axis, got a scalar")
    return x.reshape(x.shape[0], -1)


def relu(x) -> np.ndarray:
    """Elementwise max(x, 0); any shape."""
    return np.maximum(_float(x), 0.0)


def softmax(x, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis`, computed stably (the max is subtracted first); any shape."""
    x = _float(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def output_size(size: int, window: int, stride: int, padding: str) -> int:
    """Length of one spatial output axis, TensorFlow's rule: "valid" floor((size-window)/stride)+1, "same" ceil(size/stride)."""
    if padding == "same":
        return -(-size // stride)
    return (size - window) // stride + 1


def _float(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _check_rank(a: np.ndarray, rank: int, name: str, layout: str) -> None:
    if a.ndim != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {a.shape}")


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) not in (1, 2) or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return (int(pair[0]), int(pair[-1]))


def _pool_windows(x, pool_size, strides, padding, fill) -> np.ndarray:
    x = _float(x)
    _check_rank(x, 4, "pooling input x", "(N, H, W, C)")
    window = _pair(pool_size, "pool_size")
    stride = window if strides is None else _pair(strides, "strides")
    return _windows(x, window, stride, padding, fill)


def _windows(x: np.ndarray, window, stride, padding: str, fill: float) -> np.ndarray:
    """(N, H, W, C) -> (N, H_out, W_out, C, kh, kw): the input cells each output position sees."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}: use one of {', '.join(PADDINGS)}")
    pads = [(0, 0)]
    for size, k, s in zip(x.shape[1:3], window, stride):
        if padding == "valid" and k > size:
            raise ValueError(f"window {tuple(window)} is larger than the input {x.shape[1:3]} with padding 'valid'")
        total = max((output_size(size, k, s, padding) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))  # the odd cell goes bottom/right
    x = np.pad(x, pads + [(0, 0)], constant_values=fill)
    return sliding_window_view(x, tuple(window), axis=(1, 2))[:, :: stride[0], :: stride[1]]
