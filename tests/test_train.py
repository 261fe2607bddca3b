"""`edgecnn train`: the model folder it writes, the accuracy it reaches, and how it fails."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, write_image
from PIL import Image
from typer.testing import CliRunner

from edgecnn import train_plots as plots
from edgecnn.cli import app
from edgecnn.data import load_arrays, split_folder
from edgecnn.errors import EdgecnnError
from edgecnn.train import TrainConfig, choose_image_size, confusion_matrix, train
from trained_models import DIGITS_EPOCHS, copy_model_dir

keras = pytest.importorskip("keras")

MODEL_FOLDER = {"model.keras", "classes.txt", "metadata.json", "training_curves.png", "confusion_matrix.png"}


@pytest.fixture(scope="session")
def digits(digits_model):
    return digits_model


@pytest.fixture(scope="session")
def record(digits) -> dict:
    return json.loads((digits.dir / "metadata.json").read_text())


def _tiny(out: Path, data: Path, **settings):
    settings = {
        "epochs": 1,
        "batch_size": 8,
        "early_stopping_patience": 0,
        "verbose": 0,
        "allow_poor": True,
        **settings,
    }
    lines: list[str] = []
    result = train(TrainConfig(data_dir=str(data), out=str(out), **settings), log=lines.append)
    return result, lines


def _user_error(result, *fragments: str) -> None:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    for fragment in fragments:
        assert fragment in result.output
    assert "Traceback" not in result.output


# --- the model folder -------------------------------------------------------------------------


def test_training_writes_the_model_folder_and_nothing_else(digits):
    assert {p.name for p in digits.dir.iterdir()} == MODEL_FOLDER
    assert [p.name for p in digits.dir.parent.iterdir()] == ["digits"]  # no temporary leftovers


@pytest.mark.parametrize("name", ["training_curves.png", "confusion_matrix.png"])
def test_plots_are_valid_png_images(digits, name):
    with Image.open(digits.dir / name) as img:
        img.verify()
        assert img.format == "PNG" and min(img.size) >= 300


def test_classes_file_lists_the_class_names_in_index_order(digits):
    assert (digits.dir / "classes.txt").read_text().splitlines() == [str(d) for d in range(10)]


def test_metadata_records_the_input_contract(record):
    model = record["model"]
    assert record["schema_version"] == model["schema_version"] == 1
    assert model["class_names"] == [str(d) for d in range(10)]
    assert model["image_size"] == [8, 8] and model["channels"] == 1
    assert (model["layout"], model["input_dtype"], model["input_name"], model["output_name"]) == (
        "nhwc",
        "uint8",
        "image",
        "probabilities",
    )
    assert model["preprocessing"] == {
        "mode": "rescale",
        "scale": pytest.approx(1 / 255),
        "offset": 0.0,
        "mean": None,
        "color_order": "RGB",
        "in_graph": True,
    }
    assert model["architecture"] == "cnn"


def test_metadata_records_the_training_settings_and_results(record, digits_data):
    training = record["training"]
    config = training["config"]
    assert config["data_dir"] == str(digits_data)
    assert (config["epochs"], config["batch_size"], config["validation_split"], config["seed"]) == (
        DIGITS_EPOCHS,
        32,
        0.2,
        1337,
    )
    assert [b["filters"] for b in config["options"]["conv_blocks"]] == [32, 64]
    assert training["epochs_run"] == DIGITS_EPOCHS == len(training["history"]["val_accuracy"])
    assert training["best_val_accuracy"] == max(training["history"]["val_accuracy"])
    assert training["dataset"]["train_images"] + training["dataset"]["validation_images"] == 1797
    assert training["dataset"]["fingerprint"] == split_folder(config["data_dir"], 0.2, 1337).fingerprint()


def test_digits_reach_95_percent_validation_accuracy(digits, record):
    assert digits.result.val_accuracy >= 0.95
    assert record["training"]["final_val_accuracy"] == digits.result.val_accuracy
    assert digits.result.best_val_accuracy >= 0.95


def test_recorded_accuracy_and_confusion_matrix_are_what_the_saved_model_scores(digits, record):
    split = split_folder(record["training"]["config"]["data_dir"], 0.2, 1337)
    images, labels, _ = load_arrays(split.validation, (8, 8), 1)
    model = keras.models.load_model(digits.dir / "model.keras", compile=False)

    predicted = model.predict(images.astype(np.float32), verbose=0).argmax(axis=1)  # raw 0..255 pixels in

    matrix = np.asarray(record["training"]["confusion_matrix"])
    assert float((predicted == labels).mean()) == pytest.approx(record["training"]["final_val_accuracy"])
    np.testing.assert_array_equal(matrix, confusion_matrix(labels, predicted, 10))
    assert matrix.sum() == len(split.validation) == 359
    assert np.trace(matrix) / matrix.sum() == pytest.approx(record["training"]["final_val_accuracy"])


def test_confusion_matrix_rows_are_true_classes_and_columns_predictions():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3)

    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_image_size_defaults_to_the_median_side_within_each_models_limits():
    assert choose_image_size("cnn", 4) == (8, 8)
    assert choose_image_size("cnn", 40) == (40, 40)
    assert choose_image_size("cnn", 500) == (64, 64)
    assert choose_image_size("resnet50", 8) == (32, 32)
    assert choose_image_size("resnet50", 500) == (224, 224)


# --- augmentation -----------------------------------------------------------------------------


def test_augmentation_is_recorded_but_never_saved_in_the_model(augmented_model):
    trained = augmented_model
    record = json.loads((trained.dir / "metadata.json").read_text())

    model = keras.models.load_model(trained.dir / "model.keras", compile=False)

    assert record["training"]["config"]["augment"] == ["hflip", "vflip", "rotate", "zoom"]
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert record["model"]["image_size"] == [16, 16] and record["model"]["channels"] == 3  # chosen from the data


# --- atomic replacement -----------------------------------------------------------------------


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_leaves_the_previous_model_intact(tmp_path, digits, monkeypatch, interruption):
    old = copy_model_dir(digits.dir, tmp_path / "models" / "digits")
    (old / "model.onnx").write_bytes(b"an earlier export")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    data = make_image_folder(tmp_path / "shapes", per_class=5, size=8)

    def crash(*args, **kwargs):
        raise interruption("stopped while writing the plots")

    monkeypatch.setattr(plots, "plot_confusion_matrix", crash)
    with pytest.raises(interruption):
        _tiny(old, data)

    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["digits"]

    monkeypatch.undo()
    _tiny(old, data)  # the next complete run replaces the folder as a whole
    assert {p.name for p in old.iterdir()} == MODEL_FOLDER
    assert json.loads((old / "metadata.json").read_text())["model"]["class_names"] == ["circle", "square"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["digits"]


def test_out_folder_that_is_not_a_model_is_refused_before_training(tmp_path):
    data = make_image_folder(tmp_path / "shapes", per_class=5, size=8)

    with pytest.raises(EdgecnnError, match="is a folder that is not an edgecnn model and would be replaced"):
        _tiny(tmp_path, data)  # --out . would have replaced the dataset itself

    assert len(list(data.glob("*/*.png"))) == 10


# --- imperfect data ---------------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path) -> tuple[Path, Path]:
    """12 grayscale 12x12 images per class, a text file and one corrupt PNG."""
    root = make_image_folder(tmp_path / "messy", per_class=12, size=12, channels=1)
    (root / "circle" / "notes.txt").write_text("not a picture")
    bad = root / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root, bad


def test_corrupt_images_and_other_files_are_skipped_with_warnings(tmp_path, messy_folder):
    root, bad = messy_folder

    result, log = _tiny(tmp_path / "m", root)

    assert f"warning: skipped 1 non-image files under {root}/ (for example {root / 'circle' / 'notes.txt'})" in log
    assert any(
        line.startswith(f"warning: skipped 1 images that could not be decoded, for example {bad}: ") for line in log
    )
    assert result.metadata.image_size == (12, 12) and result.metadata.channels == 1  # chosen from the data


def test_a_class_whose_validation_images_all_fail_to_decode_is_named(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=6, size=8)
    make_image_folder(data / "val", classes=("circle",), per_class=2, size=8)
    (data / "val" / "square").mkdir()
    (data / "val" / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    _, log = _tiny(tmp_path / "m", data)

    assert "data after skipping: 12 training and 2 validation images" in log
    assert any(line.startswith("warning: no validation image of square: the validation accuracy says") for line in log)


def test_strict_stops_at_a_corrupt_image_and_names_it(tmp_path, messy_folder):
    root, bad = messy_folder

    result = CliRunner().invoke(app, ["train", str(root), "--strict", "--epochs", "1", "--out", str(tmp_path / "m")])

    _user_error(result, f"error: {bad}: not a decodable image", "drop --strict")
    assert not (tmp_path / "m").exists()


def test_train_cli_json_prints_only_the_result_on_stdout_and_logs_to_stderr(tmp_path):
    data = make_image_folder(tmp_path / "shapes", per_class=6, size=8)

    result = CliRunner().invoke(
        app,
        [
            "train",
            str(data),
            "--epochs",
            "1",
            "--patience",
            "0",
            "--image-size",
            "10x12",
            "--allow-poor",  # one epoch on 12 images: what is printed is tested here, not learning
            "--out",
            str(tmp_path / "m"),
            "--json",
        ],
    )

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["circle", "square"]
    assert summary["image_size"] == [10, 12] and summary["channels"] == 3 and summary["epochs_run"] == 1
    assert "data: 10 training and 2 validation images, 2 classes, input 10x12x3" in result.stderr
    assert "epoch 1/1: accuracy " in result.stderr
    assert {p.name for p in (tmp_path / "m").iterdir()} == MODEL_FOLDER


# --- bad input through the CLI ----------------------------------------------------------------


def _one_class(root: Path) -> Path:
    return make_image_folder(root, classes=("cat",), per_class=4, size=8)


def _empty_class(root: Path) -> Path:
    make_image_folder(root, per_class=4, size=8)
    (root / "empty").mkdir()
    return root


def _flat(root: Path) -> Path:
    write_image(root / "a.png", np.zeros((8, 8), np.uint8))
    return root


@pytest.mark.parametrize(
    "make, options, message",
    [
        (None, [], "no such folder; expected"),
        (_flat, [], "error: no class subfolders in"),
        (_one_class, [], "has only one class subfolder (cat); a classifier needs at least two"),
        (_empty_class, [], "has no images (empty); add images or remove the folder"),
        (
            lambda root: make_image_folder(root, per_class=1, size=8),
            [],
            "--validation-split 0.2: leaves the validation subset empty (2 images)",
        ),
        (
            lambda root: make_image_folder(root, per_class=4, size=8),
            ["--validation-split", "0"],
            "--validation-split 0.0: expected a fraction between 0 and 1",
        ),
        (
            lambda root: make_image_folder(root, per_class=4, size=8),
            ["--validation-split", "1"],
            "--validation-split 1.0: expected a fraction between 0 and 1",
        ),
        (
            lambda root: make_image_folder(root, per_class=4, size=8),
            ["--augment", "blur"],
            "--augment blur: unknown; choose from hflip,vflip,rotate,zoom",
        ),
    ],
    ids=[
        "missing",
        "no-class-folders",
        "one-class",
        "empty-class",
        "split-empties-validation",
        "split-0",
        "split-1",
        "unknown-augmentation",
    ],
)
def test_bad_training_data_exits_1_with_a_message_and_writes_nothing(tmp_path, make, options, message):
    data = tmp_path / "data"
    if make is not None:
        make(data)

    result = CliRunner().invoke(app, ["train", str(data), "--epochs", "1", "--out", str(tmp_path / "m"), *options])

    _user_error(result, message)
    assert not (tmp_path / "m").exists()


def test_an_out_folder_that_cannot_be_written_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "file" / "m")])
    _user_error(result, f"cannot write {tmp_path / 'file' / 'm'}: ")  # not "no such data folder": that comes after


@pytest.mark.parametrize(
    "options, message",
    [
        (["--alpha", "0.35"], "--alpha 0.35: the cnn architecture does not use it (used by mobilenetv2)"),
        (["--weights", "imagenet"], "--weights imagenet: the cnn architecture does not use it (used by resnet50, mo"),
        (["--model", "mobilenetv2", "--dense", "16,8"], "--dense 16,8: the mobilenetv2 architecture does not use it"),
        (["--model", "resnet50", "--conv-filters", "8"], "--conv-filters 8: the resnet50 architecture does not use it"),
        (["--model", "resnet50", "--kernel-size", "5"], "--kernel-size 5: the resnet50 architecture does not use it"),
        (["--fine-tune-layers", "3"], "--fine-tune-layers 3: fine-tuning unfreezes a pretrained backbone"),
        (["--model", "resnet50", "--fine-tune-layers", "3"], "fine-tuning unfreezes a pretrained backbone"),
        (["--dropout", "1.5"], "--dropout 1.5: expected a rate from 0 up to (not including) 1"),
    ],
)
def test_a_setting_the_architecture_would_not_use_is_refused_before_any_work(tmp_path, options, message):
    result = CliRunner().invoke(app, ["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), *options])
    _user_error(result, message)  # before the (missing) data folder is even looked at
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs 0: expected 1 or more"),
        (["--learning-rate", "0"], "--learning-rate 0.0: expected a learning rate above 0"),
        (["--patience", "-1"], "--patience -1: expected 0 or more (0 turns early stopping off)"),
        (["--channels", "2"], "--channels 2: expected 1 or 3"),
        (["--distribute-timeout", "0"], "--distribute-timeout 0.0: expected seconds above 0"),
    ],
)
def test_impossible_training_settings_are_named_by_their_flag_before_any_data_is_read(tmp_path, flags, message):
    from typer.testing import CliRunner

    from edgecnn.cli import app

    result = CliRunner().invoke(app, ["train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "m"), *flags])
    assert result.exit_code == 1 and result.output.strip() == f"error: {message}"
    assert not (tmp_path / "m").exists()


def test_the_library_names_the_setting_itself():
    from edgecnn.errors import SettingError
    from edgecnn.train import TrainConfig

    with pytest.raises(SettingError, match=r"^early_stopping_patience -1: expected 0 or more"):
        TrainConfig(early_stopping_patience=-1)
