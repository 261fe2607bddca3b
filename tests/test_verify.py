"""edgecnn verify: the verification set an export keeps, and checking a file on this device against it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from edgecnn.cli import app
from edgecnn.errors import ModelError
from edgecnn.runtime import RunnerConfig
from edgecnn.verify import VERIFY_FILE, balanced_indices, read_verification_set, verify, write_verification_set
from trained_models import copy_export


@pytest.fixture(scope="module")
def exported(exported_digits):
    return exported_digits


def test_export_keeps_the_images_its_accuracy_check_used_with_keras_answers(exported):
    vset = read_verification_set(exported)
    report = json.loads((exported / "export_report.json").read_text())

    assert len(vset) == report["images"] == 256  # the same images: verify judges what export judged
    assert vset.images.shape == (256, 8, 8, 1) and vset.images.dtype == np.uint8
    assert np.bincount(vset.labels, minlength=10).min() >= 24  # 10 classes take turns
    np.testing.assert_allclose(vset.probabilities.sum(1), 1.0, atol=1e-5)
    assert vset.class_names == tuple(str(i) for i in range(10)) and vset.max_accuracy_drop == 1.0
    assert report["verification"] == {
        "file": str(exported / VERIFY_FILE),
        "images": 256,
        "bytes": (exported / VERIFY_FILE).stat().st_size,
    }
    assert report["verification"]["bytes"] < 40_000  # 256 8x8 digits, compressed


def test_balanced_indices_let_every_class_take_turns():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    assert balanced_indices(labels, 4).tolist() == [0, 1, 4, 5]
    assert balanced_indices(labels, 100).tolist() == list(range(7))


def test_large_inputs_keep_fewer_images_to_bound_the_file(tmp_path):
    images = np.zeros((10, 2048, 2048, 3), np.uint8)  # 12 MiB each: at most 2 fit in 32 MiB
    path, kept, size = write_verification_set(
        tmp_path, images, np.arange(10) % 2, np.full((10, 2), 0.5, np.float32), ("a", "b"), 1.0, 64
    )
    assert kept == 2 and path.stat().st_size == size


@pytest.mark.parametrize("variant", ["model.onnx", "model.int8.onnx"])
def test_every_exported_variant_passes_on_the_cpu(exported, variant):
    result = verify(exported / variant, RunnerConfig(device="cpu"))
    assert result.passed and result.images == 256
    assert result.accuracy >= result.keras_accuracy - 0.01 and result.keras_agreement >= 0.98
    assert result.max_prob_diff < (1e-5 if variant == "model.onnx" else 0.1)
    assert result.provider == "CPUExecutionProvider"


def _broken_copy(exported, tmp_path):
    """The export with its classifier's weights zeroed: every image gets the same answer."""
    folder = copy_export(exported, tmp_path / "broken")
    model = onnx.load(str(folder / "model.onnx"))
    matrices = [t for t in model.graph.initializer if len(t.dims) == 2]
    last = matrices[-1]
    last.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(last)), last.name))
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def test_cli_passes_a_good_model_and_fails_a_broken_one_with_exit_1(exported, tmp_path):
    good = CliRunner().invoke(app, ["verify", str(exported), "--variant", "all", "--device", "cpu"])
    assert good.exit_code == 0, good.output
    assert good.stdout.count("PASS ") == 2

    broken = _broken_copy(exported, tmp_path)
    bad = CliRunner().invoke(app, ["verify", str(broken / "model.onnx"), "--device", "cpu", "--json"])
    assert bad.exit_code == 1
    result = json.loads(bad.stdout)
    assert result["passed"] is False and result["accuracy"] < 0.3 and result["drop_pp"] > 50
    assert "error: verification failed for model.onnx" in bad.stderr


def test_a_folder_without_a_verification_set_says_how_to_make_one(exported, tmp_path):
    old = copy_export(exported, tmp_path / "old")
    (old / VERIFY_FILE).unlink()
    result = CliRunner().invoke(app, ["verify", str(old / "model.onnx")])
    assert result.exit_code == 1
    assert "has no verification set" in result.stderr and f"edgecnn export {old}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_folder_and_a_negative_budget_are_one_line_errors(exported, tmp_path):
    missing = CliRunner().invoke(app, ["verify", str(tmp_path / "nowhere")])
    assert (
        missing.exit_code == 1
        and missing.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such model folder or file"
    )
    negative = CliRunner().invoke(app, ["verify", str(exported), "--max-accuracy-drop", "-1"])
    assert negative.exit_code == 1 and "--max-accuracy-drop -1.0: expected 0 or more" in negative.stderr


def test_a_negative_budget_in_the_file_is_blamed_on_the_file_not_on_a_flag(tmp_path):
    images = np.zeros((4, 8, 8, 1), np.uint8)
    write_verification_set(tmp_path, images, np.arange(4) % 2, np.full((4, 2), 0.5, np.float32), "ab", -1.0, 4)
    with pytest.raises(ModelError, match=rf"^{tmp_path / VERIFY_FILE}: max_accuracy_drop -1.0 is not a budget"):
        read_verification_set(tmp_path)


def test_a_pass_on_a_model_that_learned_nothing_comes_with_a_warning(tmp_path):
    from conftest import linear_reference, make_linear_onnx

    model = make_linear_onnx(tmp_path / "chance" / "model.onnx")
    images = np.random.default_rng(0).integers(0, 256, size=(30, 8, 8, 1), dtype=np.uint8)
    probs = linear_reference(model, images)
    wrong = (probs.argmax(1) + 1) % 3  # Keras itself never right: below chance
    write_verification_set(model.parent, images, wrong, probs, ("a", "b", "c"), 1.0, 30)
    result = CliRunner().invoke(app, ["verify", str(model)])
    assert result.exit_code == 0 and "PASS" in result.stdout
    assert (
        "warning: Keras itself answers 0.0% of these 30 images right, no better than always answering" in result.stderr
    )


@pytest.mark.parametrize(
    "classes, right, warned",
    [
        (2, 45, False),  # 70% of 64 with two classes: learned, even if modestly
        (2, 36, True),  # 56%: as many could be guesses
        (6, 10, True),  # 15.6% of 64 with six classes: chance (photos-resnet50-224's set)
        (6, 20, False),  # 31%: well above one in six
        (10, 64, False),
    ],
)
def test_the_chance_warning_tells_guessing_from_a_modest_model(classes, right, warned):
    from edgecnn.verify import VerificationSet, no_better_than_chance

    labels = np.arange(64) % classes  # a balanced set
    answers = labels.copy()
    answers[right:] = (labels[right:] + 1) % classes  # the first `right` answered right, the others wrong
    probs = np.eye(classes, dtype=np.float32)[answers]
    vset = VerificationSet(np.zeros((64, 8, 8, 1), np.uint8), labels, probs, tuple("abcdefghij"[:classes]), 1.0, None)
    assert bool(no_better_than_chance(vset)) is warned


def test_a_corrupt_verification_set_is_a_one_line_error(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "corrupt")
    (folder / VERIFY_FILE).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="not a readable verification set"):
        read_verification_set(folder)


def test_one_declared_giant_image_is_refused_before_it_is_decompressed(tmp_path):
    """A single image is always kept, whatever its size, so a set may hold one large image; but not one
    larger than any model takes (a few MiB of zip declaring 9000x9000 pixels)."""
    import zipfile

    from numpy.lib import format as npy

    side = 9000  # 77 MiB of pixels, in well under 1 MiB of zip
    path = tmp_path / VERIFY_FILE
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as fh:
            npy.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (1, side, side, 1)})
            for _ in range(side):
                fh.write(bytes(side))
        for name, array in (("labels", np.zeros(1, np.int32)), ("probabilities", np.ones((1, 2), np.float32))):
            with archive.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, array)
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(ModelError, match=r"declare 77 MiB, more than an export writes"):  # read from the headers
        read_verification_set(tmp_path)
    with pytest.raises(ModelError, match=r"one input image of this model .* more than edgecnn verifies"):
        write_verification_set(
            tmp_path, np.zeros((1, side, side, 1), np.uint8), np.zeros(1), np.ones((1, 2)), "ab", 1, 1
        )


def test_a_file_of_another_model_is_refused(exported, tmp_path, linear_model):
    import shutil

    folder = copy_export(exported, tmp_path / "mixed")
    shutil.copy(linear_model, folder / "other.onnx")  # 3 classes, not the digits' 10
    with pytest.raises(ModelError, match="classes differ from the verification set"):
        verify(folder / "other.onnx")
