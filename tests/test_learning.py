"""Every registered architecture learns from random weights, and a model that did not learn is
never written silently.

Each architecture trains through the command line with its own defaults (only the data, the image
size and the epochs are chosen here, to keep the suite fast) on three classes of real photographs
that the project makes offline (`edgecnn datasets photos`: crops of photographs shipped in
scikit-learn and scikit-image).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecnn.cli import app
from edgecnn.verdict import EXIT_CODE, judge
from trained_models import copy_model_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")

PHOTO_CLASSES = ("cat", "china", "flower")  # scikit-image's chelsea, scikit-learn's china and flower
LEARNED = 0.85  # the validation accuracy every architecture reaches from random weights
# (image size, epochs) per architecture: small and few, for speed; everything else is the CLI default
SETTINGS = {"cnn": (32, 8), "resnet50": (32, 8), "mobilenetv2": (48, 8)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """240 real-photo JPEGs, 48x48, in three classes: 192 training images (six whole batches of 32, so
    that no small last batch weighs on the BatchNorm statistics) and 48 validation images."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    result = CliRunner().invoke(
        app,
        ["datasets", "photos", str(root), "--per-class", "80", "--size", "48", "--classes", ",".join(PHOTO_CLASSES)],
    )
    assert result.exit_code == 0, result.output
    return root


def _train(data: Path, out: Path, *flags: str):
    return CliRunner().invoke(app, ["train", str(data), "--out", str(out), "--json", *flags])


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory):
    """architecture -> (its model folder, the --json summary of its CLI run), trained once."""
    runs = {}

    def run(architecture: str):
        if architecture not in runs:
            size, epochs = SETTINGS[architecture]
            out = tmp_path_factory.mktemp(architecture) / architecture
            result = _train(photos, out, "--model", architecture, "--image-size", str(size), "--epochs", str(epochs))
            assert result.exit_code == 0, result.output
            runs[architecture] = out, json.loads(result.stdout)
        return runs[architecture]

    return run


@pytest.mark.parametrize("architecture", list(SETTINGS))
def test_every_architecture_learns_real_photos_from_random_weights_with_its_defaults(trained, architecture):
    from edgecnn.models import ARCHITECTURES

    assert set(SETTINGS) == set(ARCHITECTURES)  # a new architecture gets its learning test too
    out, summary = trained(architecture)
    record = json.loads((out / "metadata.json").read_text())
    training = record["training"]

    assert summary["val_accuracy"] >= LEARNED, training["history"]["val_accuracy"]
    assert training["config"]["options"]["weights"] == "none" and training["config"]["options"]["bn_momentum"] is None
    assert training["dataset"]["validation_images"] == 48 and record["model"]["class_names"] == list(PHOTO_CLASSES)
    verdict = training["verdict"]
    assert verdict == summary["verdict"]
    assert verdict["learned"] and verdict["written"] and verdict["val_accuracy"] == summary["val_accuracy"]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_model_that_did_not_learn_exits_3_with_one_line_and_leaves_the_folder_as_it_was(photos, trained, tmp_path):
    previous, _ = trained("cnn")
    out = copy_model_dir(previous, tmp_path / "model")
    before = _snapshot(out)

    # one epoch at a learning rate that blows the weights up: answers no better than chance
    result = _train(photos, out, "--image-size", "32", "--epochs", "1", "--learning-rate", "100")

    assert result.exit_code == EXIT_CODE == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert re.match(
        r"error: the model did not learn: validation accuracy \d+\.\d% \(best epoch \d+\.\d%\) is not above "
        r"\d+\.\d% \(chance 33\.3%, majority class 33\.3%, 48 validation images\); likely causes: ",
        errors[0],
    ), errors[0]
    for cause in ("--bn-momentum", "--epochs", "--learning-rate", "labels"):
        assert cause in errors[0]
    assert errors[0].endswith(f"nothing was written ({out} is untouched; --allow-poor writes the model anyway)")
    summary = json.loads(result.stdout)  # --json still prints the result, with the verdict
    assert summary["verdict"]["learned"] is False and summary["verdict"]["written"] is False
    assert _snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["model"]  # no leftovers


def test_allow_poor_writes_it_anyway_and_the_report_shows_the_verdict(photos, tmp_path):
    out = tmp_path / "poor"

    result = CliRunner().invoke(
        app,
        ["train", str(photos), "--out", str(out), "--image-size", "32", "--epochs", "1", "--learning-rate", "100"]
        + ["--allow-poor"],
    )

    assert result.exit_code == 0, result.output
    assert "warning: the model did not learn: validation accuracy " in result.output
    assert "written anyway (--allow-poor)" in result.output and "next: edgecnn export" not in result.output
    verdict = json.loads((out / "metadata.json").read_text())["training"]["verdict"]
    assert (verdict["learned"], verdict["written"], verdict["chance"]) == (False, True, pytest.approx(1 / 3))

    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert "training did not learn: validation accuracy " in report.output
    page = (out / "report.html").read_text()
    assert "<p class='poor'>This model did not learn: validation accuracy " in page
    as_json = json.loads(CliRunner().invoke(app, ["report", str(out), "--json"]).stdout)
    assert as_json["verdict"]["learned"] is False


def test_the_report_of_a_model_that_learned_says_so(trained):
    out, _ = trained("cnn")

    result = CliRunner().invoke(app, ["report", str(out)])

    assert result.exit_code == 0 and "training learned: validation accuracy" in result.output
    assert "<p class='learned'>Training learned: validation accuracy" in (out / "report.html").read_text()


# --- the verdict's arithmetic ----------------------------------------------------------------


def test_accuracy_within_the_noise_of_chance_has_not_learned():
    labels = [0, 1, 2] * 12  # 36 images: two standard errors of guessing are 15.7 points
    verdict = judge(labels, labels[:16] + [(k + 1) % 3 for k in labels[16:]], 3)  # 44% right, chance 33%

    assert verdict.chance == pytest.approx(1 / 3) and verdict.threshold == pytest.approx(
        1 / 3 + 2 * (2 / 9 / 36) ** 0.5
    )
    assert not verdict.learned and verdict.val_accuracy == pytest.approx(16 / 36)
    assert judge(labels, labels[:30] + [0] * 6, 3).learned  # 30 + 2 of 36 right


def test_always_answering_the_largest_class_has_not_learned_however_high_its_accuracy():
    labels = [0] * 90 + [1] * 10

    verdict = judge(labels, [0] * 100, 2)

    assert verdict.val_accuracy == verdict.majority == 0.9 and not verdict.learned
    assert judge(labels, [0] * 90 + [1] * 5 + [0] * 5, 2).learned  # 95% beats the majority's 90%


def test_margin_is_at_least_five_points_on_a_large_validation_set():
    labels = list(range(10)) * 1000
    assert judge(labels, labels, 10).threshold == pytest.approx(0.15)


def test_on_a_handful_of_images_every_answer_right_still_passes():
    verdict = judge([0, 1], [0, 1], 2)  # noise alone would ask for 121%

    assert verdict.learned and verdict.threshold == 0.5
    assert not judge([0, 1], [0, 0], 2).learned


# --- the photos dataset ------------------------------------------------------------------------


def test_photos_are_crops_of_the_shipped_photographs_reused_when_complete_and_never_replace_other_folders(tmp_path):
    from PIL import Image

    from edgecnn.builtin_datasets import write_photos
    from edgecnn.errors import EdgecnnError

    out = write_photos(tmp_path / "photos", per_class=3, size=24, classes=("china", "flower"))

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert files == [f"{c}/{c}_{i:04d}.jpg" for c in ("china", "flower") for i in range(3)]
    with Image.open(out / "china" / "china_0000.jpg") as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (24, 24), "RGB")
    stamp = (out / "china" / "china_0000.jpg").stat().st_mtime_ns
    assert write_photos(out, per_class=3, size=24, classes=("china", "flower")) == out  # the same settings: reused
    assert (out / "china" / "china_0000.jpg").stat().st_mtime_ns == stamp
    with pytest.raises(EdgecnnError, match="written with other settings; pass --overwrite"):
        write_photos(out, per_class=4, size=24, classes=("china", "flower"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(EdgecnnError, match="is not a photos tree written by edgecnn"):
        write_photos(tmp_path / "mine", per_class=1, size=24)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_an_unknown_photo_class_is_one_line_naming_the_choices(tmp_path):
    result = CliRunner().invoke(app, ["datasets", "photos", str(tmp_path / "p"), "--classes", "china,dog"])

    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == (
        "error: --classes dog: not a photo class; choose from astronaut, cat, china, coffee, flower, rocket"
    )
    assert not (tmp_path / "p").exists()


def test_a_from_scratch_backbone_trains_on_whole_batches_only_when_there_is_one():
    from edgecnn.models import ArchitectureOptions
    from edgecnn.train import TrainConfig, whole_batches_only

    def whole(model, images, **options):
        return whole_batches_only(TrainConfig(model=model, options=ArchitectureOptions(**options)), images)

    assert whole("mobilenetv2", 144) and whole("resnet50", 32)  # batch size 32: a last batch of 16 is left out
    assert not whole("mobilenetv2", 31)  # no whole batch: train on what there is
    assert not whole("cnn", 144)  # no BatchNorm
    assert not whole("mobilenetv2", 144, weights="imagenet")  # pretrained: BatchNorm frozen in inference mode
    assert not whole("resnet50", 144, bn_momentum=0.99)  # statistics over many batches: a small one weighs little
