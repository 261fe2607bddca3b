"""A crash or a SIGKILL while `export` or `train` writes leaves the previous model folder whole:
never a mix of old and new files. Tested with real kills of real child processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecnn import files
from edgecnn.files import replace_files_together
from trained_models import copy_model_dir

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    """Name -> sha256 of every file in `folder`, leaving out export's hidden scratch folders."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not rel.startswith(".edgecnn-export-"):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# -- the building block ---------------------------------------------------------------------
def test_files_are_replaced_together_others_hard_linked_and_the_scratch_folder_left_out(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    for name, text in {"keep.txt": "kept", "a.onnx": "old a", "gone.onnx": "old gone", "sub/x": "x"}.items():
        (folder / name).write_text(text)
    scratch = folder / ".scratch"
    scratch.mkdir()
    (scratch / "a.onnx").write_text("new a")
    (scratch / "b.json").write_text("new b")
    kept_inode = (folder / "keep.txt").stat().st_ino

    replace_files_together(folder, {"a.onnx": scratch / "a.onnx", "b.json": scratch / "b.json"}, remove=["gone.onnx"])

    assert snapshot(folder).keys() == {"keep.txt", "a.onnx", "b.json", "sub/x"}
    assert (folder / "a.onnx").read_text() == "new a" and (folder / "b.json").read_text() == "new b"
    assert (folder / "keep.txt").stat().st_ino == kept_inode  # linked, not copied
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing left beside it


def test_a_failure_before_the_exchange_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.onnx").write_text("old a")
    (folder / "gone.onnx").write_text("old gone")
    new = tmp_path / "new.onnx"
    new.write_text("new a")
    before = snapshot(folder)

    def power_cut(a, b):
        raise OSError("simulated crash before the exchange")

    monkeypatch.setattr(files, "swap_paths", power_cut)
    with pytest.raises(OSError, match="simulated"):
        replace_files_together(folder, {"a.onnx": new}, remove=["gone.onnx"])
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# -- real kills ------------------------------------------------------------------------------
def _edgecnn(*args: str) -> subprocess.Popen:
    code = "import sys; from edgecnn.cli import app; sys.argv = ['edgecnn'] + sys.argv[1:]; app()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL `proc` as soon as `ready()` is true; False when it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    proc.wait(timeout=timeout)
    return False


@pytest.fixture(scope="module")
def exported(exported_digits):
    return exported_digits


@pytest.mark.parametrize("moment", ["while converting", "while committing", "at the first change in the folder"])
def test_sigkill_during_export_leaves_the_previous_export_whole_or_the_new_one_whole(exported, tmp_path, moment):
    folder = tmp_path / "digits"
    copy_model_dir(exported, folder)
    for name in ("model.onnx", "model.int8.onnx", "verification.npz", "export_report.json", "export_report.md"):
        (folder / name).write_bytes((exported / name).read_bytes())
    (folder / "deploy.json").write_text(json.dumps({"tuned": "for the int8 file above"}))
    (folder / "model.int8.shifted.onnx").write_bytes((exported / "model.int8.onnx").read_bytes())
    before = snapshot(folder)

    # the new export has no INT8 variant: a mix would show as an INT8 file beside a report without one
    proc = _edgecnn("export", str(folder), "--quantize", "fp32", "--parity-samples", "32", "--latency-batch", "4")
    if moment == "while converting":
        killed = _kill_when(proc, lambda: any(folder.glob(".edgecnn-export-*/model.onnx")))
        assert killed, "export ended before the kill"
    elif moment == "while committing":
        killed = _kill_when(proc, lambda: any(tmp_path.glob(".digits.new.*")))
    else:  # one file written the old way (one at a time) is enough to leave a mix here
        inode = (folder / "model.onnx").stat().st_ino
        killed = _kill_when(
            proc,
            lambda: (
                not (folder / "model.int8.onnx").exists()
                or not (folder / "model.onnx").exists()
                or (folder / "model.onnx").stat().st_ino != inode
            ),
        )

    after = snapshot(folder)
    if after == before:
        return  # the previous export, whole
    assert not killed or moment != "while converting", "the folder changed before the commit"
    report = json.loads((folder / "export_report.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["fp32"]
    assert set(after) == {
        "model.keras",
        "metadata.json",
        "classes.txt",
        "model.onnx",
        "verification.npz",
        "export_report.json",
        "export_report.md",
    }  # tune's files for the old model went too
    assert after["model.keras"] == before["model.keras"]


def test_a_completed_export_says_it_removed_what_was_tuned_for_the_earlier_one(exported, tmp_path):
    folder = tmp_path / "digits"
    copy_model_dir(exported, folder)
    (folder / "deploy.json").write_text("{}")
    proc = _edgecnn("export", str(folder), "--quantize", "fp32", "--parity-samples", "32", "--latency-batch", "4")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()
    assert f"removing deploy.json: tuned for the earlier export; run edgecnn tune {folder} again" in err.decode()
    assert not (folder / "deploy.json").exists() and not list(folder.glob(".edgecnn-export-*"))


def test_sigkill_during_train_leaves_the_previous_model_folder_whole(exported, tmp_path, digits_data):
    folder = tmp_path / "digits"
    copy_model_dir(exported, folder)
    before = snapshot(folder)
    data = digits_data

    proc = _edgecnn("train", str(data), "--out", str(folder), "--epochs", "1")
    killed = _kill_when(proc, lambda: any(tmp_path.glob(".digits.*.tmp/*")))  # while it writes its new folder

    assert killed, "train ended before the kill"
    assert snapshot(folder) == before
