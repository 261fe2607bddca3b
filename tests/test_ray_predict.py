"""`predict --ray`: the same answers as plain predict, from Ray actors on a local Ray.

Ray starts once for the module (2 CPUs); the CLI test in a fresh interpreter starts and stops
its own local Ray, as a user's `--ray local` does, and so does the serializer-import test.
Those are the suite's only three Ray starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_image_folder, make_linear_onnx
from edgecnn.cli import app
from edgecnn.errors import DataError, EdgecnnError
from edgecnn.predict import PredictConfig, predict
from edgecnn.ray_predict import Layout, RayPredictConfig, expand_sources, plan_layout, predict_on_ray, start_local_ray
from edgecnn.runtime import RunnerConfig

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("circle", "square")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    start_local_ray(2)  # as --ray local starts it
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A 16x16 RGB two-class model, a labelled folder of 24 images and one corrupt file in it."""
    root = tmp_path_factory.mktemp("ray")
    model = make_linear_onnx(root / "model" / "model.onnx", image_size=(16, 16), channels=3, classes=CLASSES)
    folder = make_image_folder(root / "images", classes=CLASSES, per_class=12, size=16)
    (folder / "square" / "broken.png").write_bytes(b"this is not a png")
    return model, folder


def _config(model, folder, **ray_settings) -> RayPredictConfig:
    pc = PredictConfig(model=model, inputs=(folder,), batch_size=5, top_k=2, runner=RunnerConfig(device="cpu"))
    return RayPredictConfig(pc, **ray_settings)


@pytest.fixture(scope="module")
def both(local_ray, labelled):
    """Plain predict and Ray on the same folder."""
    model, folder = labelled
    config = _config(model, folder)
    return predict(config.predict), predict_on_ray(config)


def test_ray_answers_every_image_exactly_as_plain_predict(both):
    plain, on_ray = both
    assert [r.path for r in on_ray.rows] == [r.path for r in plain.rows]
    for a, b in zip(on_ray.rows, plain.rows):
        assert [name for name, _ in a.top] == [name for name, _ in b.top]
        assert np.allclose([p for _, p in a.top], [p for _, p in b.top], rtol=0, atol=1e-7)
        assert (a.error, a.true_label) == (b.error, b.true_label)


def test_ray_counts_and_lists_the_corrupt_file_and_scores_the_labelled_folder_as_plain_predict(both):
    plain, on_ray = both
    assert (on_ray.count, on_ray.failed) == (25, 1)
    assert on_ray.failures[0].path.endswith("broken.png") and "not a decodable image" in on_ray.failures[0].error
    assert on_ray.accuracy == plain.accuracy and on_ray.labelled == plain.labelled == 24
    assert on_ray.confusion == plain.confusion
    assert (on_ray.ray["actors"], on_ray.ray["cpus_per_actor"]) == (1, 2)  # one node of 2 CPUs: one actor
    assert on_ray.ray["providers"] == ["CPUExecutionProvider"] and on_ray.runner["intra_op_threads"] == 2
    assert on_ray.summary()["failed_images"] == [on_ray.failures[0].path]


def test_one_actor_runs_one_block_and_several_share_about_four_blocks_each():
    from edgecnn.ray_predict import MAX_BLOCK_BATCHES, _blocks

    files = [f"{i}.png" for i in range(600)]
    assert [len(b) for b in _blocks(files, 32, actors=1)] == [600]  # one decoding pipeline from start to end
    assert sum(len(b) for b in _blocks(files, 32, actors=2)) == 600 and len(_blocks(files, 32, actors=2)) == 7
    many = [f"{i}.png" for i in range(10_000)]
    assert max(len(b) for b in _blocks(many, 32, actors=1)) == MAX_BLOCK_BATCHES * 32
    assert [p for b in _blocks(many, 32, actors=3) for p in b] == many  # in listing order, each once


@pytest.mark.parametrize("actors", [2, 3])  # 3 actors of 2/3 CPU: the third may not fit on 2 CPUs
def test_several_actors_write_the_same_rows_to_a_file(local_ray, labelled, both, actors, tmp_path):
    plain, _ = both
    model, folder = labelled
    out = tmp_path / "rows.jsonl"
    shared = predict_on_ray(_config(model, folder, actors=actors, output=out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {r.path: r for r in plain.rows}
    assert sorted(row["path"] for row in rows) == sorted(expected)  # each image once
    assert all(
        (row["label"], row["error"]) == (expected[row["path"]].label, expected[row["path"]].error) for row in rows
    )
    assert shared.count == plain.count and shared.accuracy == plain.accuracy


def test_two_actors_of_one_cpu_answer_exactly_as_plain_predict(local_ray, labelled, both):
    plain, _ = both
    model, folder = labelled
    on_ray = predict_on_ray(_config(model, folder, actors=2))
    assert (on_ray.ray["actors"], on_ray.ray["cpus_per_actor"], on_ray.ray["images_per_block"]) == (2, 1, 5)
    assert [r.path for r in on_ray.rows] == [r.path for r in plain.rows]
    for a, b in zip(on_ray.rows, plain.rows):
        assert (a.top, a.error, a.true_label) == (b.top, b.error, b.true_label)


def test_an_actor_that_cannot_open_the_model_is_a_one_line_error_with_the_reason(local_ray, labelled, tmp_path):
    import ray

    from edgecnn.ray_predict import Predictor, _answer

    actor = ray.remote(Predictor).options(num_cpus=1).remote(str(tmp_path / "gone.onnx"), RunnerConfig(), None, 1, 5, 1)
    with pytest.raises(EdgecnnError) as failed:
        _answer(actor.ready.remote())
    assert str(failed.value) == f"{tmp_path / 'gone.onnx'}: no such model file"


def _layout(nodes, gpus=0.0, **settings):
    device = settings.pop("device", "cpu")
    pc = PredictConfig(model=Path("m.onnx"), inputs=(Path("x"),), runner=RunnerConfig(device=device))
    return plan_layout(RayPredictConfig(pc, **settings), nodes, gpus)


def test_the_layout_is_one_actor_per_node_with_its_cpus_unless_told_otherwise():
    assert _layout([2.0]) == Layout(actors=1, cpus_per_actor=2.0, gpus_per_actor=0.0)
    assert _layout([8.0, 32.0]) == Layout(actors=5, cpus_per_actor=8.0, gpus_per_actor=0.0)  # the smallest node's
    assert _layout([2.0], actors=2) == Layout(actors=2, cpus_per_actor=1.0, gpus_per_actor=0.0)
    assert _layout([16.0], cpus_per_actor=4) == Layout(actors=4, cpus_per_actor=4, gpus_per_actor=0.0)
    assert _layout([16.0], gpus=4.0, device="cuda") == Layout(actors=4, cpus_per_actor=1.0, gpus_per_actor=1.0)
    with pytest.raises(EdgecnnError, match="cpus_per_actor 16: no node of this Ray has that many"):
        _layout([8.0], cpus_per_actor=16)
    with pytest.raises(EdgecnnError, match="has 0 GPU"):
        _layout([8.0], device="cuda")


def test_a_local_ray_runs_its_workers_at_the_priority_of_the_command_that_started_it(local_ray):
    import os

    @local_ray.remote
    def niceness() -> int:
        return os.nice(0)

    assert local_ray.get(niceness.remote()) == os.nice(0)  # not Ray's default of 15


def test_a_local_ray_has_its_serializers_imported_before_the_first_call_instead_of_during_it():
    """Ray's first remote call builds its serialization context, importing pydantic's v1 layer,
    pyarrow and starlette in the driver (0.04-0.1 s); `start_local_ray` imports them while Ray's
    processes start (a fresh process: the module-scoped Ray of the other tests has made calls)."""
    script = (
        "import sys\n"
        "from edgecnn.ray_predict import start_local_ray\n"
        "start_local_ray(1)\n"
        "import ray, ray._private.worker as worker\n"
        "before = set(sys.modules)\n"
        "worker.global_worker.get_serialization_context()\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('pyarrow', 'pydantic', 'starlette')))\n"
        "ray.shutdown()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_ray_writes_json_lines_and_parquet_that_read_back_as_the_rows(local_ray, labelled, both, tmp_path):
    import pyarrow.parquet as pq

    plain, _ = both
    model, folder = labelled
    expected = {r.path: r for r in plain.rows}
    jsonl = predict_on_ray(_config(model, folder, output=tmp_path / "rows.jsonl"))
    assert jsonl.rows == () and jsonl.count == 25  # streamed to the file, not kept
    lines = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sorted(row["path"] for row in lines) == sorted(expected)
    for row in lines:
        want = expected[row["path"]]
        assert row["label"] == want.label and row["error"] == want.error
        assert np.allclose([t["probability"] for t in row["top_k"]], [p for _, p in want.top], rtol=0, atol=1e-7)

    predict_on_ray(_config(model, folder, output=tmp_path / "rows.parquet"))
    table = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    assert len(table) == 25
    for row in table:
        want = expected[row["path"]]
        assert (row["label"], row["true_label"], row["error"]) == (want.label, want.true_label, want.error)
        assert row["top_labels"] == [name for name, _ in want.top]
        assert np.allclose(row["top_probabilities"], [p for _, p in want.top], rtol=0, atol=1e-7)


def test_a_uri_source_is_listed_and_read_through_pyarrow_filesystems_with_the_same_answers(local_ray, labelled, both):
    plain, _ = both
    model, folder = labelled
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(model),
            f"file://{folder}",
            "--ray",
            "local",
            "--format",
            "json",
            "--top-k",
            "2",
            "--batch-size",
            "5",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 4, res.output
    *rows, summary = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in rows] == [f"file://{r.path}" for r in plain.rows]
    for a, b in zip(rows, plain.rows):
        assert (a["label"], a["error"] is None) == (b.label, b.error is None)
        assert np.allclose([t["probability"] for t in a["top_k"]], [p for _, p in b.top], rtol=0, atol=1e-7)
    assert summary["failed"] == 1 and summary["failed_images"] == [f"file://{folder}/square/broken.png"]
    assert summary["accuracy"] is None  # labels come from local class folders only
    with pytest.raises(DataError, match="either local paths or URIs"):
        predict_on_ray(RayPredictConfig(PredictConfig(model=model, inputs=(folder, f"file://{folder}"))))


def test_sources_may_be_globs_and_text_files_of_paths(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=CLASSES, per_class=2, size=8)
    listing = tmp_path / "images" / "some.txt"
    listing.write_text("# two files\ncircle/circle_001.png\n\n" + str(folder / "square" / "square_000.png") + "\n")
    assert expand_sources([str(folder / "*" / "*_000.png")]) == [
        folder / "circle" / "circle_000.png",
        folder / "square" / "square_000.png",
    ]
    assert expand_sources([listing]) == [folder / "circle" / "circle_001.png", folder / "square" / "square_000.png"]
    with pytest.raises(DataError, match="matches no file"):
        expand_sources([str(tmp_path / "*.jpeg")])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"address": "data/photos"}, "expected local, auto, ray://HOST:PORT"),
        ({"output": Path("rows.csv")}, "output rows.csv: expected a file ending in one of .jsonl"),
        ({"actors": 0}, "actors 0: expected 1 or more"),
    ],
)
def test_bad_ray_settings_are_one_line_errors_before_ray_starts(labelled, settings, message):
    model, folder = labelled
    with pytest.raises(EdgecnnError, match=message):
        _config(model, folder, **settings)


def test_without_ray_the_cli_names_the_extra_to_install(labelled, monkeypatch):
    model, folder = labelled
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as without the extra
    res = CliRunner().invoke(app, ["predict", str(model), str(folder), "--ray", "local", "--device", "cpu"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert 'pip install "edgecnn[ray]"' in res.stderr


def test_plain_predict_never_imports_ray(labelled):
    model, folder = labelled
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom edgecnn.cli import app\n"
        f"res = CliRunner().invoke(app, ['predict', {str(model)!r}, {str(folder)!r}, '--device', 'cpu'])\n"
        "assert res.exit_code == 4, res.output\n"
        "print('LOADED', sorted(m for m in ('ray', 'pyarrow', 'tensorflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout


def test_cli_ray_local_starts_and_stops_its_own_ray_exits_2_for_a_corrupt_file_and_imports_no_tensorflow(
    labelled, tmp_path
):
    model, folder = labelled
    out = tmp_path / "rows.parquet"
    argv = [
        "edgecnn",
        "predict",
        str(model),
        str(folder),
        "--ray",
        "local",
        "--ray-cpus",
        "2",
        "--output",
        str(out),
        "--format",
        "json",
        "--device",
        "cpu",
    ]
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('HEAVY', sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'matplotlib') if m in sys.modules)))\n"
        f"sys.argv = {argv!r}\nfrom edgecnn.cli import main\nmain()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 4, done.stderr
    assert "HEAVY []" in done.stdout.splitlines()
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["path"] for row in lines[:-1]] == [str(folder / "square" / "broken.png")]  # only the failure
    summary = lines[-1]
    assert (summary["images"], summary["failed"], summary["labelled"]) == (25, 1, 24)
    assert summary["ray"]["address"] == "local" and summary["output"] == str(out)
    assert "1 of 25 images could not be read" in done.stderr
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 25


def test_output_without_ray_is_a_one_line_error(labelled, tmp_path):
    model, folder = labelled
    res = CliRunner().invoke(app, ["predict", str(model), str(folder), "--output", str(tmp_path / "rows.jsonl")])
    assert res.exit_code == 1
    assert res.stderr.strip() == "error: --output needs --ray; plain predict writes rows with --format json > FILE"
    assert not (tmp_path / "rows.jsonl").exists()


@pytest.mark.parametrize("flag", ["--ray-actors", "--ray-cpus"])
def test_a_ray_setting_without_ray_is_a_one_line_error_not_ignored(labelled, flag):
    model, folder = labelled
    res = CliRunner().invoke(app, ["predict", str(model), str(folder), flag, "-1"])
    assert res.exit_code == 1
    assert res.stderr.strip() == f"error: {flag}: a Ray setting; add --ray local, auto or ray://HOST:PORT"
