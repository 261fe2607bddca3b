"""The model registry: cnn layer settings, resnet50 on random weights, fine-tuning, weights errors."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import math
import socket
import urllib.error

import numpy as np
import pytest
from conftest import make_image_folder
from typer.testing import CliRunner

from edgecnn.errors import EdgecnnError, SettingError
from edgecnn.metadata import IMAGENET_CAFFE_MEAN_BGR
from edgecnn.models import (
    ArchitectureOptions,
    ARCHITECTURES,
    ConvBlock,
    ModelSpec,
    backbone_of,
    build_model,
    parse_conv_blocks,
    parse_dense,
    unfreeze_top,
)


keras = pytest.importorskip("keras")


def _cnn(image_size=(16, 16), **options) -> ModelSpec:
    return ModelSpec("cnn", image_size, 1, 3, ArchitectureOptions(**options))


def _types(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


# --- cnn ------------------------------------------------------------------------------------


def test_cnn_conv_layers_have_the_requested_filters_kernels_strides_and_padding():
    blocks = (ConvBlock(8, 5, 2, "valid"), ConvBlock(16, 3, 1, "same", "tanh"))

    model = build_model(_cnn(conv_blocks=blocks, dense=(12,)))

    conv1, conv2 = model.get_layer("conv1").get_config(), model.get_layer("conv2").get_config()
    assert (conv1["filters"], conv1["kernel_size"], conv1["strides"], conv1["padding"]) == (8, (5, 5), (2, 2), "valid")
    assert (conv2["filters"], conv2["kernel_size"], conv2["strides"], conv2["padding"]) == (16, (3, 3), (1, 1), "same")
    assert conv2["activation"] == "tanh"
    # 16 -(5x5 valid, stride 2)-> 6 -(pool 2)-> 3 -(3x3 same)-> 3 -(pool 2)-> 1
    assert model.get_layer("conv1").output.shape == (None, 6, 6, 8)
    assert model.get_layer("pool2").output.shape == (None, 1, 1, 16)
    assert model.get_layer("dense1").units == 12
    assert model.output_shape == (None, 3)


def test_cnn_pooling_layers_follow_the_pool_settings():
    model = build_model(_cnn(pool="max", pool_size=3, pool_strides=2, pool_padding="same"))

    pool = model.get_layer("pool1")
    assert type(pool).__name__ == "MaxPooling2D"
    assert (pool.pool_size, pool.strides, pool.padding) == ((3, 3), (2, 2), "same")
    assert pool.output.shape == (None, 8, 8, 32)


def test_cnn_with_average_pooling_has_no_max_pooling():
    types = _types(build_model(_cnn(pool="avg")))

    assert types.count("AveragePooling2D") == 2 and "MaxPooling2D" not in types


def test_cnn_without_pooling_keeps_the_spatial_size():
    model = build_model(_cnn(pool="none", head="gap"))

    assert "MaxPooling2D" not in _types(model)
    assert model.get_layer("conv2").output.shape == (None, 16, 16, 64)


def test_cnn_gap_head_replaces_flatten_with_global_average_pooling():
    model = build_model(_cnn(head="gap", dense=()))

    types = _types(model)
    assert "GlobalAveragePooling2D" in types and "Flatten" not in types
    # gap -> softmax directly: 64 * 3 weights + 3 biases in the head
    assert model.get_layer("probabilities").count_params() == 64 * 3 + 3


def test_cnn_takes_raw_pixels_and_outputs_probabilities():
    model = build_model(_cnn())

    assert model.get_layer("rescale").scale == pytest.approx(1 / 255)
    probs = model.predict(np.full((2, 16, 16, 1), 255, np.float32), verbose=0)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_built_models_contain_no_augmentation_layers():
    assert not [t for t in _types(build_model(_cnn())) if t.startswith("Random")]


def test_conv_filters_text_sets_per_block_kernels():
    blocks = parse_conv_blocks("5x32, 64", kernel_size=3, strides=2, padding="valid", activation="relu")

    assert blocks == (ConvBlock(32, 5, 2, "valid"), ConvBlock(64, 3, 2, "valid"))
    with pytest.raises(EdgecnnError, match="--conv-filters 32,big: expected numbers"):
        parse_conv_blocks("32,big", 3, 1, "same", "relu")


@pytest.mark.parametrize("text", ["ax32", "5x", "x", "3x3x32"])
def test_a_bad_kernel_in_conv_filters_is_a_one_line_error_not_a_traceback(text):
    from typer.testing import CliRunner

    from edgecnn.cli import app

    with pytest.raises(EdgecnnError, match="expected numbers like 32,64"):
        parse_conv_blocks(text, 3, 1, "same", "relu")
    out = CliRunner().invoke(app, ["train", "no-such-folder", "--conv-filters", text])
    assert (
        out.exit_code == 1
        and out.stderr.strip()
        == f"error: --conv-filters {text}: expected numbers like 32,64 (or 5x32 for a 5x5 kernel)"
    )


@pytest.mark.parametrize("text", ["0x32", "32,0", "x32", "3x", "-8"])
def test_conv_filters_with_a_zero_negative_or_missing_number_is_one_error(text):
    with pytest.raises(EdgecnnError, match=f"--conv-filters {text}: expected numbers"):
        parse_conv_blocks(text, 3, 1, "same", "relu")


def test_dense_text_is_positive_layer_sizes_or_none():
    assert parse_dense("64, 32") == (64, 32)
    assert parse_dense("") == ()
    for text in ("big", "64,0", "-1"):
        with pytest.raises(EdgecnnError, match=f"--dense {text}: expected positive layer sizes"):
            parse_dense(text)


def test_unknown_architecture_lists_the_registered_ones():
    with pytest.raises(SettingError, match=r"^model vgg99: expected one of cnn, resnet50, mobilenetv2$"):
        build_model(ModelSpec("vgg99", (16, 16), 1, 3))
    assert {"cnn", "resnet50"} <= set(ARCHITECTURES)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"conv_blocks": (ConvBlock(8, 3, 1, "same", "sparkle"),)}, "--activation sparkle: not a Keras activation"),
        (
            {"image_size": (4, 4), "conv_blocks": (ConvBlock(8, 5, 1, "valid"),)},
            r"image size 4x4 is too small for 1 conv blocks \(block 1 gets 4x4, smaller than its 5x5 kernel\)",
        ),
        (
            {"image_size": (6, 6), "conv_blocks": (ConvBlock(8, 3, 1, "valid"), ConvBlock(8, 3, 1, "valid"))},
            r"block 2 gets 2x2, smaller than its 3x3 kernel",
        ),
    ],
)
def test_impossible_cnn_settings_are_errors(changes, message):
    with pytest.raises(EdgecnnError, match=message):
        build_model(_cnn(**changes))


# --- resnet50 -------------------------------------------------------------------------------


def _resnet(channels=3, image_size=(32, 32), **options) -> ModelSpec:
    return ModelSpec("resnet50", image_size, channels, 2, ArchitectureOptions(**options))


@pytest.fixture(scope="module")
def resnet50():
    return build_model(_resnet())


def test_resnet50_head_and_its_caffe_preprocessing_are_in_the_model(resnet50):
    assert [layer.name for layer in resnet50.layers] == [
        "image",
        "caffe_preprocess",
        "resnet50",
        "gap",
        "probabilities",
    ]
    assert resnet50.output_shape == (None, 2)
    pre = keras.Model(resnet50.input, resnet50.get_layer("caffe_preprocess").output)
    rgb = np.tile(np.array([200.0, 100.0, 50.0], np.float32), (1, 32, 32, 1))

    out = pre.predict(rgb, verbose=0)[0, 0, 0]

    np.testing.assert_allclose(out, np.array([50.0, 100.0, 200.0]) - np.array(IMAGENET_CAFFE_MEAN_BGR), atol=1e-4)


@pytest.mark.parametrize("n_layers", [0, 10, 40])
def test_unfreeze_top_makes_exactly_the_top_layers_trainable_except_batchnorm(resnet50, n_layers):
    unfrozen = unfreeze_top(resnet50, n_layers)

    layers = backbone_of(resnet50).layers
    top = set(range(len(layers) - n_layers, len(layers))) if n_layers else set()
    for i, layer in enumerate(layers):
        expected = i in top and type(layer).__name__ != "BatchNormalization"
        assert layer.trainable == expected, (i, layer.name)
    assert unfrozen == [
        layers[i].name for i in sorted(top) if layers[i].weights and type(layers[i]).__name__ != "BatchNormalization"
    ]
    assert not resnet50.get_layer("caffe_preprocess").trainable


def test_unfreeze_top_10_leaves_three_convolutions_and_the_head_to_train(resnet50):
    unfrozen = unfreeze_top(resnet50, 10)

    assert unfrozen == ["conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"]
    assert len(resnet50.trainable_weights) == 3 * 2 + 2  # kernel + bias each, and the Dense head


def test_unfreeze_top_needs_a_resnet50_backbone():
    with pytest.raises(EdgecnnError, match=r"this model \(cnn\) has no pretrained backbone to fine-tune"):
        unfreeze_top(build_model(_cnn()), 5)


def test_resnet50_trains_one_epoch_at_32x32_from_random_weights(resnet50_model):
    trained = resnet50_model

    record = json.loads((trained.dir / "metadata.json").read_text())
    assert record["model"]["architecture"] == "resnet50"
    assert record["model"]["image_size"] == [32, 32] and record["model"]["channels"] == 3
    assert record["model"]["preprocessing"]["mode"] == "caffe"
    assert record["training"]["config"]["options"]["weights"] == "none"
    assert record["training"]["epochs_run"] == 1
    assert len(record["training"]["history"]["loss"]) == 1 and math.isfinite(record["training"]["history"]["loss"][0])
    assert (
        record["training"]["dataset"]["train_images"] == 8 and record["training"]["dataset"]["validation_images"] == 4
    )
    assert 0.0 <= trained.result.val_accuracy <= 1.0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"channels": 1}, "resnet50 takes RGB images: use --channels 3"),
        ({"image_size": (24, 24)}, "--image-size 24x24: resnet50 needs at least 32x32"),
        ({"weights": "/missing/file.h5"}, "--weights /missing/file.h5: no such file; use imagenet, none, or a path"),
    ],
)
def test_impossible_resnet50_settings_are_errors(changes, message):
    with pytest.raises(EdgecnnError, match=message):
        build_model(_resnet(**changes))


def test_offline_imagenet_weights_say_to_pass_a_local_weights_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    before = socket.getdefaulttimeout()

    with pytest.raises(EdgecnnError) as err:
        build_model(_resnet(weights="imagenet"))

    assert "could not download the ImageNet weights (URLError" in str(err.value)
    assert "pass --weights PATH to a local resnet50 notop .h5 file, or --weights none" in str(err.value)
    assert socket.getdefaulttimeout() == before


def test_train_cli_with_a_missing_weights_file_exits_1_with_the_message(tmp_path):
    from edgecnn.cli import app

    data = make_image_folder(tmp_path / "shapes", per_class=3, size=32)
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(data),
            "--model",
            "resnet50",
            "--weights",
            "/missing/file",
            "--validation-split",
            "0.34",
            "--out",
            str(tmp_path / "m"),
        ],
    )

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "error: --weights /missing/file: no such file" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_a_width_that_is_not_positive_is_named_when_the_options_are_made(alpha):
    with pytest.raises(
        SettingError, match=rf"^alpha {alpha}: expected a width multiplier \(e.g. 0.35, 0.5, 1.0\) above 0"
    ):
        ArchitectureOptions(alpha=alpha)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ConvBlock(8, 3, 1, "full"), "padding full: expected valid or same"),
        (lambda: ArchitectureOptions(pool="median"), "pool median: expected one of max, avg, none"),
        (lambda: ArchitectureOptions(pool_padding="full"), "pool_padding full: expected valid or same"),
        (lambda: ArchitectureOptions(head="attention"), "head attention: expected flatten or gap"),
    ],
)
def test_impossible_cnn_options_are_named_when_they_are_made(make, message):
    with pytest.raises(SettingError, match=f"^{message}$"):
        make()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--pool", "median"], "--pool median: expected one of max, avg, none"),
        (
            ["--model", "mobilenetv2", "--alpha", "0"],
            "--alpha 0.0: expected a width multiplier (e.g. 0.35, 0.5, 1.0) above 0",
        ),
        (["--padding", "full"], "--padding full: expected valid or same"),
    ],
)
def test_on_the_command_line_a_bad_option_is_named_by_its_flag(tmp_path, flags, message):
    from typer.testing import CliRunner

    from edgecnn.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m"), *flags])
    assert result.exit_code == 1 and result.output.strip() == f"error: {message}"
    assert not (tmp_path / "m").exists()
