"""The session cache: a CPU session opens from onnxruntime's optimized graph written by the first one."""

from __future__ import annotations

import errno
import fcntl
import os
import time

import numpy as np
import pytest

from conftest import make_conv_onnx
from edgecnn import session_cache
from edgecnn.errors import ModelError
from edgecnn.runtime import Runner, RunnerConfig

CPU = RunnerConfig(device="cpu", intra_op_threads=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(session_cache.ENV, str(folder))
    monkeypatch.setattr(session_cache, "MIN_MODEL_BYTES", 0)  # the test models are tiny
    monkeypatch.setattr(session_cache, "INLINE_BYTES", 0)  # so that their weights go beside the graph too
    return folder


def settled(path):
    """A model file as if written a while ago (a file changed in the last 2 s is not cached yet)."""
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


@pytest.fixture
def model(tmp_path):
    return settled(make_conv_onnx(tmp_path / "model.onnx", side=16, filters=8, layers=2))


def answers(runner: Runner) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return runner.run(images)


def entries(folder):
    return sorted(p.name for p in folder.glob("*.onnx"))


def weights(folder):
    return sorted(p.name for p in folder.glob("*.weights"))


def test_the_first_session_writes_the_graph_and_the_next_opens_from_it_with_the_same_answers(cache, model):
    first = Runner(model, CPU)
    assert first.session_cache == session_cache.WRITTEN and len(entries(cache)) == 1
    assert len(weights(cache)) == 1  # the weights beside the graph, memory-mapped by the next session
    again = Runner(model, CPU)
    assert again.session_cache == session_cache.HIT
    assert again.describe()["session_cache"] == "hit"
    assert np.array_equal(answers(first), answers(again))  # the same graph: bit for bit
    assert again.metadata == first.metadata and again.input_name == first.input_name


def test_a_rewritten_model_file_is_a_miss_never_the_old_graph(cache, model, tmp_path):
    before = answers(Runner(model, CPU))
    settled(make_conv_onnx(tmp_path / "other.onnx", side=16, filters=8, layers=2, seed=7))
    os.replace(tmp_path / "other.onnx", model)
    changed = Runner(model, CPU)
    assert changed.session_cache == session_cache.WRITTEN
    assert not np.array_equal(answers(changed), before)
    assert len(entries(cache)) == 2


def test_an_entry_is_for_one_onnxruntime_one_cpu_and_one_optimization_level(cache, model, monkeypatch):
    model = model.resolve()
    base = session_cache.entry_path(cache, model, "all", "1.32.0")
    assert session_cache.entry_path(cache, model, "all", "1.32.0") == base
    assert session_cache.entry_path(cache, model, "all", "1.33.0") != base
    assert session_cache.entry_path(cache, model, "basic", "1.32.0") != base
    monkeypatch.setattr(session_cache, "cpuinfo", lambda: ("Another CPU", {"avx2"}))
    assert session_cache.entry_path(cache, model, "all", "1.32.0") != base


@pytest.mark.parametrize("word", ["off", "0"])
def test_the_cache_can_be_turned_off(cache, model, monkeypatch, word):
    monkeypatch.setenv(session_cache.ENV, word)
    runner = Runner(model, CPU)
    assert runner.session_cache == session_cache.OFF
    assert not cache.exists()


def test_a_damaged_entry_is_removed_and_the_model_opened_as_usual(cache, model):
    expected = answers(Runner(model, CPU))
    (entry,) = cache.glob("*.onnx")
    entry.write_bytes(b"not a model")
    runner = Runner(model, CPU)
    assert runner.session_cache == session_cache.WRITTEN  # written again, from the model
    assert np.array_equal(answers(runner), expected)
    assert Runner(model, CPU).session_cache == session_cache.HIT
    assert len(weights(cache)) == 1  # the damaged entry's weights went with it


def test_a_session_keeps_answering_after_its_entry_is_evicted_or_replaced(cache, model):
    expected = answers(Runner(model, CPU))
    mapped = Runner(model, CPU)
    assert mapped.session_cache == session_cache.HIT
    for path in cache.iterdir():
        path.unlink()  # what eviction does: the mapped weights stay readable
    assert Runner(model, CPU).session_cache == session_cache.WRITTEN
    assert np.array_equal(answers(mapped), expected)


def test_while_another_process_writes_an_entry_a_session_opens_from_the_model(cache, model):
    entry = session_cache.entry_path(cache, model.resolve(), "all", session_cache_version())
    cache.mkdir()
    with open(entry.with_suffix(".lock"), "w") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # as another process writing the entry holds it
        runner = Runner(model, CPU)
    assert runner.session_cache == session_cache.MISSED
    assert entries(cache) == []
    assert answers(runner).shape == (4, 3)


def test_a_lock_file_left_by_a_writer_that_died_does_not_stop_the_next(cache, model):
    entry = session_cache.entry_path(cache, model.resolve(), "all", session_cache_version())
    cache.mkdir()
    entry.with_suffix(".lock").touch()  # the kernel let go of its lock with the process
    assert Runner(model, CPU).session_cache == session_cache.WRITTEN


def test_a_model_file_changed_in_the_last_seconds_is_not_cached_yet(cache, tmp_path):
    fresh = make_conv_onnx(tmp_path / "fresh.onnx", side=16, filters=8, layers=2)
    assert Runner(fresh, CPU).session_cache.startswith("miss (the model file changed in the last")
    assert entries(cache) == []
    assert Runner(settled(fresh), CPU).session_cache == session_cache.WRITTEN


def test_a_model_file_that_changes_while_it_is_read_is_not_cached(cache, model, monkeypatch):
    calls = iter(range(100))
    real_identity = session_cache._identity
    monkeypatch.setattr(session_cache, "_identity", lambda path: (*real_identity(path)[:3], next(calls)))
    runner = Runner(model, CPU)
    assert runner.session_cache == "miss (the model file changed while it was read)"
    assert entries(cache) == [] and weights(cache) == []


def test_an_entry_follows_a_symlink_to_the_file_it_points_at(cache, tmp_path):
    first = settled(make_conv_onnx(tmp_path / "v1.onnx", side=16, filters=8, layers=2, seed=1))
    second = settled(make_conv_onnx(tmp_path / "v2.onnx", side=16, filters=8, layers=2, seed=2))
    link = tmp_path / "current.onnx"
    link.symlink_to(first)
    assert Runner(link, CPU).session_cache == session_cache.WRITTEN
    link.unlink()
    link.symlink_to(second)
    moved = Runner(link, CPU)
    assert moved.session_cache == session_cache.WRITTEN  # v2's own entry, never v1's
    assert np.array_equal(answers(moved), answers(Runner(second, CPU)))


def test_a_failed_write_is_a_miss_and_the_session_opens_as_usual(cache, model, monkeypatch):
    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(session_cache.os, "replace", full_disk)
    runner = Runner(model, CPU)
    assert runner.session_cache == "miss (cannot write the entry: No space left on device)"
    assert answers(runner).shape == (4, 3)
    assert entries(cache) == [] and weights(cache) == [] and not list(cache.glob("*.part"))


def test_a_broken_model_is_a_model_error_not_a_cache_error(cache, model):
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    settled(model)
    with pytest.raises(ModelError):
        Runner(model, CPU)
    assert entries(cache) == []


def test_a_model_with_external_data_opens_from_its_files(cache, tmp_path):
    import onnx

    source = make_conv_onnx(tmp_path / "inline.onnx", side=16, filters=8, layers=2)
    proto = onnx.load(str(source))
    onnx.save(proto, str(tmp_path / "split.onnx"), save_as_external_data=True, location="split.data", size_threshold=0)
    assert Runner(settled(tmp_path / "split.onnx"), CPU).session_cache == (
        "not cached (the model keeps weights in other files)"
    )


def test_only_the_most_recently_opened_entries_are_kept(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(session_cache, "MAX_ENTRIES", 2)
    models = [settled(make_conv_onnx(tmp_path / f"m{i}.onnx", side=16, filters=8, layers=1, seed=i)) for i in range(3)]
    Runner(models[0], CPU)
    Runner(models[1], CPU)
    os.utime(next(iter(sorted(cache.glob("*.onnx"), key=lambda p: p.stat().st_mtime))), (1, 1))
    Runner(models[2], CPU)
    assert len(entries(cache)) == 2 and len(weights(cache)) == 2  # an evicted entry takes its weights
    assert Runner(models[2], CPU).session_cache == session_cache.HIT


def test_a_small_model_opens_from_its_file(cache, model, monkeypatch):
    assert model.stat().st_size < 1 << 20
    monkeypatch.setattr(session_cache, "MIN_MODEL_BYTES", 1 << 20)  # the real threshold
    assert Runner(model, CPU).session_cache == "not cached (under 1 MiB: opens fast anyway)"
    assert not cache.exists()


def test_a_session_without_graph_optimizations_opens_from_its_file(cache, model):
    runner = Runner(model, RunnerConfig(device="cpu", intra_op_threads=1, graph_optimization="disable"))
    assert runner.session_cache == "not cached (graph optimization disabled)"
    assert not cache.exists()


def test_an_unwritable_cache_folder_opens_the_model_as_usual(tmp_path, model, monkeypatch):
    monkeypatch.setattr(session_cache, "MIN_MODEL_BYTES", 0)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(session_cache.ENV, str(blocker / "cache"))
    runner = Runner(model, CPU)
    assert runner.session_cache.startswith(f"miss (cannot write {blocker / 'cache'}")
    assert answers(runner).shape == (4, 3)


def session_cache_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def test_entries_are_kept_within_a_total_size(cache, tmp_path, monkeypatch):
    models = [settled(make_conv_onnx(tmp_path / f"m{i}.onnx", side=16, filters=8, layers=1, seed=i)) for i in range(2)]
    Runner(models[0], CPU)
    one_entry = sum(p.stat().st_size for p in cache.iterdir() if p.suffix in (".onnx", ".weights"))
    monkeypatch.setattr(session_cache, "MAX_BYTES", one_entry + one_entry // 2)
    Runner(models[1], CPU)
    assert len(entries(cache)) == 1  # the older one went
    assert Runner(models[1], CPU).session_cache == session_cache.HIT
