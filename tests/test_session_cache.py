"""The session cache: a CPU session opens from onnxruntime's optimized graph written by the first one."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import make_conv_onnx
from edgecnn import session_cache
from edgecnn.runtime import Runner, RunnerConfig

CPU = RunnerConfig(device="cpu", intra_op_threads=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(session_cache.ENV, str(folder))
    monkeypatch.setattr(session_cache, "MIN_MODEL_BYTES", 0)  # the test models are tiny
    return folder


@pytest.fixture
def model(tmp_path):
    return make_conv_onnx(tmp_path / "model.onnx", side=16, filters=8, layers=2)


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
    make_conv_onnx(tmp_path / "other.onnx", side=16, filters=8, layers=2, seed=7)
    os.replace(tmp_path / "other.onnx", model)
    changed = Runner(model, CPU)
    assert changed.session_cache == session_cache.WRITTEN
    assert not np.array_equal(answers(changed), before)
    assert len(entries(cache)) == 2


def test_an_entry_is_for_one_onnxruntime_one_cpu_and_one_optimization_level(cache, model, monkeypatch):
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
    entry = session_cache.entry_path(cache, model, "all", session_cache_version())
    cache.mkdir()
    entry.with_suffix(".lock").touch()
    runner = Runner(model, CPU)
    assert runner.session_cache == session_cache.MISSED
    assert entries(cache) == []
    assert answers(runner).shape == (4, 3)


def test_a_writer_lock_left_by_a_dead_process_goes_stale(cache, model):
    entry = session_cache.entry_path(cache, model, "all", session_cache_version())
    cache.mkdir()
    lock = entry.with_suffix(".lock")
    lock.touch()
    old = lock.stat().st_mtime - session_cache.STALE_SECONDS - 1
    os.utime(lock, (old, old))
    assert Runner(model, CPU).session_cache == session_cache.WRITTEN
    assert not lock.exists()


def test_only_the_most_recently_opened_entries_are_kept(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(session_cache, "MAX_ENTRIES", 2)
    models = [make_conv_onnx(tmp_path / f"m{i}.onnx", side=16, filters=8, layers=1, seed=i) for i in range(3)]
    Runner(models[0], CPU)
    Runner(models[1], CPU)
    os.utime(next(iter(sorted(cache.glob("*.onnx"), key=lambda p: p.stat().st_mtime))), (1, 1))
    Runner(models[2], CPU)
    assert len(entries(cache)) == 2 and len(weights(cache)) == 2  # an evicted entry takes its weights
    assert Runner(models[2], CPU).session_cache == session_cache.HIT


def test_a_small_model_opens_from_its_file(cache, model, monkeypatch):
    assert model.stat().st_size < 1 << 20
    monkeypatch.setattr(session_cache, "MIN_MODEL_BYTES", 1 << 20)  # the real threshold
    assert Runner(model, CPU).session_cache == session_cache.OFF
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
    models = [make_conv_onnx(tmp_path / f"m{i}.onnx", side=16, filters=8, layers=1, seed=i) for i in range(2)]
    Runner(models[0], CPU)
    one_entry = sum(p.stat().st_size for p in cache.iterdir() if p.suffix in (".onnx", ".weights"))
    monkeypatch.setattr(session_cache, "MAX_BYTES", one_entry + one_entry // 2)
    Runner(models[1], CPU)
    assert len(entries(cache)) == 1  # the older one went
    assert Runner(models[1], CPU).session_cache == session_cache.HIT
