"""Atomic writes: a crash leaves the old file, an unwritable place is a one-line user error."""

from __future__ import annotations

import pytest

from edgecnn.errors import EdgecnnError
from edgecnn.files import atomic_path, check_writable, scratch_in, write_text


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "report.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_an_unwritable_place_is_a_user_error_naming_the_path(tmp_path):
    blocker = write_text(tmp_path / "file", "x")
    with pytest.raises(EdgecnnError, match=r"cannot write .*file/out.json: .*choose a folder you can write to"):
        write_text(blocker / "out.json", "data")
    with pytest.raises(EdgecnnError, match="cannot write"):
        check_writable(blocker / "out.json")


def test_check_writable_creates_the_folder_and_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "new" / "plot.png")
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []


def test_a_folder_where_a_file_should_go_is_a_one_line_error_before_and_after_the_work(tmp_path):
    (tmp_path / "out.json").mkdir()
    with pytest.raises(EdgecnnError, match=r"cannot write .*out.json: it is a folder; give a file name"):
        check_writable(tmp_path / "out.json")
    with pytest.raises(EdgecnnError, match=r"cannot write .*out.json: .*choose a path you can write to"):
        write_text(tmp_path / "out.json", "data")
    assert (tmp_path / "out.json").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_scratch_folder_where_none_can_be_made_is_a_one_line_error_saying_why_it_is_needed(tmp_path):
    blocker = write_text(tmp_path / "file", "x")
    with pytest.raises(EdgecnnError, match=r"cannot write into .*file: .*; tune writes beside the model"):
        with scratch_in(blocker, ".edgecnn-tune-", "tune writes beside the model"):
            pass
    with scratch_in(tmp_path, ".edgecnn-tune-", "") as scratch:
        assert scratch.is_dir() and scratch.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
