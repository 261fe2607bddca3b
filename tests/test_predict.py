"""`edgecnn predict`: batched, overlapped inference over files and folders, and its output formats."""

from __future__ import annotations

import os

import csv
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import linear_reference, make_image_folder, make_linear_onnx, write_image
from typer.testing import CliRunner

from edgecnn.cli import app
from edgecnn.errors import EdgecnnError
from edgecnn.images import load_image
from edgecnn.predict import PredictConfig, decode_batches, predict, write_output
from edgecnn.runtime import RunnerConfig, import_onnxruntime

CLASSES = ("a", "b", "c")
CPU = RunnerConfig(device="cpu")
HAS_CUDA = "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()


def _expected(model: Path, path: Path) -> np.ndarray:
    """What the model should say about one file: the shared loader, then the NumPy reference."""
    return linear_reference(model, load_image(path, (8, 8), 1)[None])[0]


@pytest.fixture
def labelled(tmp_path) -> Path:
    """Class subfolders named like the linear model's classes (a, b, c), 4 images each."""
    return make_image_folder(tmp_path / "labelled", classes=CLASSES, per_class=4, size=16, channels=3)


@pytest.fixture
def with_corrupt(tmp_path) -> Path:
    root = make_image_folder(tmp_path / "mixed", classes=("x", "y"), per_class=3, size=12)
    (root / "y" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


def _config(model, *inputs, **kw) -> PredictConfig:
    return PredictConfig(model=model, inputs=tuple(inputs), runner=CPU, **kw)


# -- library ----------------------------------------------------------------------------------
def test_predictions_match_the_reference_for_every_file(linear_model, image_folder):
    result = predict(_config(linear_model, image_folder, top_k=2))
    assert result.count == 24 and result.failed == 0
    assert result.provider == "CPUExecutionProvider"
    for row in result.rows:
        probs = _expected(linear_model, Path(row.path))
        order = np.argsort(-probs)[:2]
        assert [name for name, _ in row.top] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([p for _, p in row.top], probs[order], rtol=1e-5, atol=1e-6)
        assert row.label == CLASSES[order[0]]


def test_batch_size_does_not_change_answers_or_order(linear_model, image_folder):
    big = predict(_config(linear_model, image_folder, batch_size=32))
    small = predict(_config(linear_model, image_folder, batch_size=5, decode_threads=1))
    assert [r.path for r in big.rows] == [r.path for r in small.rows]
    assert [r.path for r in big.rows] == sorted(r.path for r in big.rows)
    for a, b in zip(big.rows, small.rows):
        assert a.label == b.label
        np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], rtol=1e-5, atol=1e-6)


def test_a_corrupt_file_is_reported_in_its_row_and_the_rest_go_on(linear_model, with_corrupt):
    result = predict(_config(linear_model, with_corrupt, batch_size=2))
    assert result.count == 7 and result.failed == 1
    assert result.skipped == (str(with_corrupt / "notes.txt"),)
    bad = [r for r in result.rows if r.error is not None]
    assert [Path(r.path).name for r in bad] == ["broken.png"]
    assert bad[0].error.startswith("not a decodable image") and bad[0].top == ()
    for row in result.rows:
        if row.error is None:
            np.testing.assert_allclose(row.score, _expected(linear_model, Path(row.path)).max(), rtol=1e-5)


def test_labelled_folder_gets_accuracy_and_a_confusion_matrix(linear_model, labelled):
    result = predict(_config(linear_model, labelled))
    truth = [Path(r.path).parent.name for r in result.rows]
    predicted = [CLASSES[int(np.argmax(_expected(linear_model, Path(r.path))))] for r in result.rows]
    expected_matrix = np.zeros((3, 3), int)
    for t, p in zip(truth, predicted):
        expected_matrix[CLASSES.index(t), CLASSES.index(p)] += 1
    assert [r.true_label for r in result.rows] == truth
    assert result.labelled == 12
    assert result.accuracy == pytest.approx(np.mean([t == p for t, p in zip(truth, predicted)]))
    assert result.confusion.labels == CLASSES
    assert np.array_equal(np.array(result.confusion.matrix), expected_matrix)
    assert result.summary()["confusion"]["matrix"] == expected_matrix.tolist()


def test_folders_not_named_like_the_classes_get_no_accuracy(linear_model, image_folder):
    result = predict(_config(linear_model, image_folder))
    assert result.accuracy is None and result.confusion is None and result.labelled == 0
    assert all(r.true_label is None for r in result.rows)


def test_single_files_and_folders_mix(linear_model, image_folder, tmp_path):
    single = write_image(tmp_path / "one.jpg", np.full((9, 9, 3), 50, np.uint8))
    result = predict(_config(linear_model, single, image_folder / "circle"))
    assert result.count == 13
    assert result.rows[0].path == str(single)


def test_progress_is_reported_from_zero_to_all(linear_model, image_folder):
    calls = []
    predict(
        _config(linear_model, image_folder, batch_size=10), progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(0, 24), (10, 24), (20, 24), (24, 24)]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "batch_size 0: expected 1 or more"),
        ({"top_k": 0}, "top_k 0: expected 1 or more"),
        ({"inputs": ()}, "no images given"),
    ],
)
def test_bad_settings_are_user_errors_when_the_config_is_made(linear_model, image_folder, changes, message):
    with pytest.raises(EdgecnnError, match=f"^{message}"):
        PredictConfig(**{"model": linear_model, "inputs": (image_folder,), "runner": CPU, **changes})


def test_a_folder_without_images_is_a_user_error(linear_model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgecnnError, match="no images in"):
        predict(_config(linear_model, tmp_path / "empty"))


def test_decoding_of_the_next_batch_overlaps_the_current_one(tmp_path):
    second_batch_started = threading.Event()
    paths = [Path(f"img{i}") for i in range(4)]

    def load(path):
        if path in paths[2:]:
            second_batch_started.set()
        return np.zeros((2, 2, 1), np.uint8)

    batches = decode_batches(load, paths, batch_size=2, workers=2)
    first = next(batches)
    assert [p.name for p in first.paths] == ["img0", "img1"]
    # batch 0 is in the caller's hands and not yet finished: batch 1 must already be decoding
    assert second_batch_started.wait(timeout=10)
    assert [p.name for p in next(batches).paths] == ["img2", "img3"]
    assert next(batches, None) is None


def test_decode_batches_stops_cleanly_on_an_endless_stream():
    import itertools

    batches = decode_batches(lambda p: np.zeros((1, 1, 1), np.uint8), itertools.cycle([Path("a"), Path("b")]), 3)
    assert [len(next(batches).images) for _ in range(3)] == [3, 3, 3]
    batches.close()


# -- output formats ---------------------------------------------------------------------------
def test_json_format_is_one_object_per_image_then_a_summary(linear_model, with_corrupt):
    result = predict(_config(linear_model, with_corrupt, top_k=2))
    out = io.StringIO()
    write_output(result, "json", out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 8
    rows, summary = lines[:-1], lines[-1]
    assert all(r["type"] == "prediction" for r in rows) and summary["type"] == "summary"
    for r in rows:
        if r["error"]:
            assert r["label"] is None and r["top_k"] == []
            continue
        probs = _expected(linear_model, Path(r["path"]))
        assert [t["label"] for t in r["top_k"]] == [CLASSES[i] for i in np.argsort(-probs)[:2]]
        assert r["label"] == r["top_k"][0]["label"]
        assert r["score"] == pytest.approx(probs.max(), rel=1e-5)
    assert (summary["images"], summary["failed"], summary["provider"]) == (7, 1, "CPUExecutionProvider")


def test_csv_format_has_a_header_and_one_row_per_image(linear_model, labelled):
    result = predict(_config(linear_model, labelled, top_k=3))
    out = io.StringIO()
    write_output(result, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == [
        "path",
        "true_label",
        "label",
        "score",
        "top1_label",
        "top1_probability",
        "top2_label",
        "top2_probability",
        "top3_label",
        "top3_probability",
        "error",
    ]
    assert len(rows) == 12
    for row, r in zip(rows, result.rows):
        assert row["path"] == r.path and row["true_label"] == Path(r.path).parent.name
        assert float(row["top1_probability"]) == r.score and row["top1_label"] == r.label
        total = sum(float(row[f"top{i}_probability"]) for i in (1, 2, 3))
        assert total == pytest.approx(1.0, abs=1e-5)  # all three classes listed
        assert row["error"] == ""


# -- CLI --------------------------------------------------------------------------------------
def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_exit_code_4_a_partial_result_when_some_images_failed(linear_model, with_corrupt):
    res = _cli("predict", linear_model, with_corrupt, "--device", "cpu", "--format", "json")
    assert res.exit_code == 4
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert sum(1 for line in lines if line.get("error")) == 1
    assert "ran on CPUExecutionProvider" in res.stderr
    assert "1 of 7 images could not be read" in res.stderr


def test_cli_table_shows_rows_accuracy_and_confusion(linear_model, labelled):
    res = _cli("predict", linear_model, labelled, "--device", "cpu", "--top-k", "1")
    assert res.exit_code == 0, res.output
    result = predict(_config(linear_model, labelled))
    assert f"accuracy {result.accuracy:.4f} on 12 labelled images" in res.stdout
    assert "confusion matrix" in res.stdout
    assert res.stdout.count("a_000.png") == 1


def test_cli_csv_goes_to_stdout_and_the_summary_to_stderr(linear_model, image_folder):
    res = _cli("predict", linear_model, image_folder, "--device", "cpu", "--format", "csv", "--batch-size", "7")
    assert res.exit_code == 0
    assert len(list(csv.DictReader(io.StringIO(res.stdout)))) == 24
    assert "24 of 24 images classified" in res.stderr


def test_cli_auto_device_prints_which_provider_ran(linear_model, image_folder):
    res = _cli("predict", linear_model, image_folder, "--format", "json")
    assert res.exit_code == 0
    provider = json.loads(res.stdout.splitlines()[-1])["provider"]
    assert f"ran on {provider}" in res.stderr and "--device auto" in res.stderr


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available, so --device cuda does not fail")
def test_cli_cuda_without_cuda_is_one_red_line_and_exit_1(linear_model, image_folder):
    res = _cli("predict", linear_model, image_folder, "--device", "cuda")
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith("error: --device cuda: this onnxruntime has no CUDA execution provider")
    assert "edgecnn[gpu]" in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "xml"], "error: --format xml: expected one of table, json, csv"),
        (["--batch-size", "0"], "error: --batch-size 0: expected 1 or more"),
        (["--device", "gpu"], "error: --device gpu: expected one of cpu, cuda, tensorrt, openvino or auto"),
        (["--layout", "hwc"], "error: --layout hwc: expected nhwc or nchw"),
    ],
)
def test_cli_user_mistakes_are_one_line_and_exit_1(linear_model, image_folder, extra, message):
    res = _cli("predict", linear_model, image_folder, *extra)
    assert res.exit_code == 1
    assert res.stderr.startswith(message) and res.stderr.count("\n") == 1


def test_cli_foreign_model_needs_settings_then_runs(tmp_path, image_folder):
    model = make_linear_onnx(tmp_path / "foreign.onnx", with_metadata=False)
    res = _cli("predict", model, image_folder, "--device", "cpu")
    assert res.exit_code == 1 and "has no edgecnn metadata" in res.stderr and "--image-size" in res.stderr
    names = tmp_path / "classes.txt"
    names.write_text("red\ngreen\nblue\n")
    res = _cli(
        "predict",
        model,
        image_folder,
        "--device",
        "cpu",
        "--image-size",
        "8x8",
        "--channels",
        "1",
        "--classes",
        names,
        "--format",
        "json",
        "--top-k",
        "1",
    )
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()[:-1]]
    assert len(rows) == 24
    for r in rows:
        probs = _expected(model, Path(r["path"]))
        assert r["label"] == ("red", "green", "blue")[int(np.argmax(probs))]


def test_cli_progress_bar_goes_to_stderr_only_when_asked(linear_model, image_folder):
    shown = _cli("predict", linear_model, image_folder, "--device", "cpu", "--format", "csv", "--progress")
    hidden = _cli("predict", linear_model, image_folder, "--device", "cpu", "--format", "csv")
    assert "100%" in shown.stderr and "100%" not in hidden.stderr
    assert shown.stdout == hidden.stdout  # the bar never touches the rows
    assert len(shown.stdout.splitlines()) == len(hidden.stdout.splitlines()) == 25


def test_top_k_larger_than_the_classes_lists_every_class_once(linear_model, image_folder):
    result = predict(_config(linear_model, image_folder, top_k=10))
    assert result.top_k == 3
    assert all(sorted(name for name, _ in r.top) == list(CLASSES) for r in result.rows)


def test_cli_missing_input_is_a_user_error(linear_model, tmp_path):
    res = _cli("predict", linear_model, tmp_path / "nowhere", "--device", "cpu")
    assert res.exit_code == 1
    assert "no such file or folder" in res.stderr


# -- the device path never imports TensorFlow -----------------------------------------------
def test_device_path_never_imports_tensorflow(linear_model, image_folder):
    code = f"""
import sys
import edgecnn.cli, edgecnn.predict, edgecnn.profile, edgecnn.runtime
from edgecnn.predict import PredictConfig, predict
from edgecnn.runtime import RunnerConfig
result = predict(PredictConfig(model={str(linear_model)!r}, inputs=({str(image_folder)!r},), runner=RunnerConfig(device="cpu")))
assert result.count == 24, result.count
heavy = sorted(m for m in ("tensorflow", "keras", "tf2onnx", "matplotlib") if m in sys.modules)
print("HEAVY", heavy)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priorities are a Linux feature")
def test_decode_threads_run_at_lower_priority_than_the_model():
    import threading

    from edgecnn.predict import _lower_priority

    seen = {}

    def worker():
        _lower_priority()
        seen["decode"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["decode"] == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)  # the calling thread is untouched
