"""Shared fixtures: tiny models and image folders made on the fly (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecnn.metadata import ModelMetadata, Preprocessing, attach_to_onnx

# Trained model folders shared by the whole session (digits_data, digits_model, exported_digits, ...).
pytest_plugins = ["trained_models"]


@pytest.fixture(scope="session", autouse=True)
def session_cache_of_the_run(tmp_path_factory):
    """Sessions cache their optimized graphs in this run's own folder, never in the user's
    ~/.cache (edgecnn.session_cache); commands the tests start inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("session-cache")
        patch.setenv("EDGECNN_SESSION_CACHE", str(folder))
        yield folder


def tiny_metadata(architecture: str, classes=("a", "b", "c"), image_size=(8, 8), channels=1) -> ModelMetadata:
    """edgecnn metadata for a hand-built test model on raw uint8 NHWC pixels."""
    return ModelMetadata(
        class_names=tuple(classes),
        image_size=tuple(image_size),
        channels=channels,
        layout="nhwc",
        input_dtype="uint8",
        preprocessing=Preprocessing(mode="rescale", scale=1 / 255),
        architecture=architecture,
    )


def make_linear_onnx(
    path: Path, image_size=(8, 8), channels=1, classes=("a", "b", "c"), seed=0, with_metadata=True, layout="nhwc"
) -> Path:
    """A tiny softmax-regression ONNX classifier on raw uint8 pixels (no TensorFlow needed).

    uint8 image -> Cast -> *1/255 -> Flatten -> MatMul -> Add -> Softmax, with edgecnn metadata.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = image_size
    features = h * w * channels
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 1.0, size=(features, len(classes))).astype(np.float32)
    bias = rng.normal(0, 0.1, size=(len(classes),)).astype(np.float32)
    shape = ["N", h, w, channels] if layout == "nhwc" else ["N", channels, h, w]
    nodes = [
        helper.make_node("Cast", ["image"], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_float", "scale"], ["x_scaled"]),
        helper.make_node("Flatten", ["x_scaled"], ["x_flat"], axis=1),
        helper.make_node("MatMul", ["x_flat", "W"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(classes)])],
        initializer=[
            numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(bias, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        meta = ModelMetadata(
            class_names=tuple(classes),
            image_size=tuple(image_size),
            channels=channels,
            layout=layout,
            input_dtype="uint8",
            preprocessing=Preprocessing(mode="rescale", scale=1 / 255),
            architecture="linear",
        )
        attach_to_onnx(model, meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_conv_onnx(path: Path, side=48, filters=48, layers=3, classes=("a", "b", "c"), seed=0) -> Path:
    """A small convnet on uint8 RGB images whose run costs a few milliseconds on one core, so that a
    server's capacity is set by the model rather than by HTTP (overload tests)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
        numpy_helper.from_array(np.array([0, 3, 1, 2], np.int64), "perm_unused"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "scale"], ["xs"]),
        helper.make_node("Transpose", ["xs"], ["h0"], perm=[0, 3, 1, 2]),
    ]
    channels = 3
    for i in range(layers):
        w = rng.normal(0, (2 / (9 * channels)) ** 0.5, (filters, channels, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("Conv", [f"h{i}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"]),
        ]
        channels = filters
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (filters, len(classes))).astype(np.float32), "dense"))
    nodes += [
        helper.make_node("GlobalAveragePool", [f"h{layers}"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", side, side, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(classes)])],
        [i for i in inits if i.name != "perm_unused"],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    attach_to_onnx(
        model,
        ModelMetadata(
            class_names=tuple(classes),
            image_size=(side, side),
            channels=3,
            layout="nhwc",
            input_dtype="uint8",
            preprocessing=Preprocessing(mode="rescale", scale=1 / 255),
            architecture="conv",
        ),
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def linear_reference(path: Path, batch_uint8: np.ndarray) -> np.ndarray:
    """What `make_linear_onnx`'s model computes, in NumPy (an independent oracle)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = batch_uint8.reshape(len(batch_uint8), -1).astype(np.float32) * init["scale"]
    logits = x @ init["W"] + init["B"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_image(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_image_folder(
    root: Path, classes=("circle", "square"), per_class=12, size=16, channels=3, seed=0, fmt="png"
) -> Path:
    """Class subfolders of simple, learnable synthetic images: class k is bright in region k."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        for i in range(per_class):
            img = rng.integers(0, 60, size=(size, size, channels), dtype=np.uint8)
            band = slice(k * size // len(classes), (k + 1) * size // len(classes))
            img[band, :, :] = rng.integers(180, 255, dtype=np.uint8)
            write_image(root / name / f"{name}_{i:03d}.{fmt}", img)
    return root


@pytest.fixture
def linear_model(tmp_path) -> Path:
    """A tiny 8x8 grayscale, 3-class ONNX model with edgecnn metadata."""
    return make_linear_onnx(tmp_path / "tiny" / "model.onnx")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")
