"""Model folders that several test modules need, trained once per test session.

Training is the slow part of the suite, so the test modules share these session fixtures
(registered for every module by conftest.py's `pytest_plugins`) instead of each training its
own. A test that changes a model folder works on a `copy_model_dir` or `copy_export` copy.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import make_image_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DIGITS_EPOCHS = 15
TRAINED_FILES = ("model.keras", "metadata.json", "classes.txt")


@dataclass
class Trained:
    """A trained model folder, what `train` returned and what it logged."""

    dir: Path
    result: object  # edgecnn.train.TrainResult
    log: list[str] = field(default_factory=list)


def _train(out: Path, **settings) -> Trained:
    """Train through the library. These fixtures test the plumbing on tiny data and epochs, not learning
    (tests/test_learning.py does): a model that did not learn is written all the same (allow_poor)."""
    from edgecnn.train import TrainConfig, train

    from edgecnn.models import ArchitectureOptions

    option_names = {f.name for f in dataclasses.fields(ArchitectureOptions)}
    options = ArchitectureOptions(**{k: settings.pop(k) for k in list(settings) if k in option_names})
    lines: list[str] = []
    settings = {"early_stopping_patience": 0, "verbose": 0, "allow_poor": True, **settings}
    result = train(TrainConfig(out=str(out), options=options, **settings), log=lines.append)
    return Trained(out, result, lines)


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> Path:
    """The built-in digits written as class folders (1,797 8x8 grayscale PNGs)."""
    from edgecnn.builtin_datasets import write_digits

    return write_digits(tmp_path_factory.mktemp("digits_data") / "digits")


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory, digits_data) -> Trained:
    """The default CNN trained on the digits for `DIGITS_EPOCHS` epochs (no early stopping)."""
    return _train(tmp_path_factory.mktemp("digits_model") / "digits", data_dir=str(digits_data), epochs=DIGITS_EPOCHS)


@pytest.fixture(scope="session")
def augmented_model(tmp_path_factory) -> Trained:
    """A small CNN trained one epoch on 16x16 RGB shapes with every augmentation switched on."""
    root = tmp_path_factory.mktemp("augmented_model")
    data = make_image_folder(root / "shapes", per_class=10, size=16)
    return _train(
        root / "augmented", data_dir=str(data), epochs=1, batch_size=8, augment=("hflip", "vflip", "rotate", "zoom")
    )


@pytest.fixture(scope="session")
def resnet50_model(tmp_path_factory) -> Trained:
    """ResNet50 with random weights, one epoch at 32x32 on 8 training and 4 validation images."""
    root = tmp_path_factory.mktemp("resnet50_model")
    data = make_image_folder(root / "shapes", per_class=6, size=32)
    return _train(
        root / "resnet50",
        data_dir=str(data),
        model="resnet50",
        weights="none",
        image_size=(32, 32),
        epochs=1,
        batch_size=4,
        validation_split=1 / 3,
    )


def copy_model_dir(src: Path, dst: Path) -> Path:
    """A fresh copy of a trained model folder (the training output only, no exports)."""
    dst.mkdir(parents=True)
    for name in TRAINED_FILES:
        shutil.copy2(src / name, dst / name)
    return dst


@pytest.fixture(scope="session")
def exported_digits(tmp_path_factory, digits_model) -> Path:
    """The digits CNN exported with its INT8 variant (and the verification set export keeps)."""
    from edgecnn.export import ExportConfig, export

    model_dir = copy_model_dir(digits_model.dir, tmp_path_factory.mktemp("exported_digits") / "digits")
    export(ExportConfig(str(model_dir), quantize=("int8",), latency_batch=4), log=lambda _m: None)
    return model_dir


def copy_export(src: Path, dst: Path) -> Path:
    """A fresh copy of an exported model folder (a test may add deploy.json or break a file)."""
    shutil.copytree(src, dst)
    return dst
