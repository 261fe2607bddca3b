"""`edgecnn profile`: latency statistics, warm-up, memory, machine info, operator profile, speedups, plot."""

from __future__ import annotations

import json
import subprocess
import sys
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import make_image_folder, make_linear_onnx
from typer.testing import CliRunner

from edgecnn.cli import app
from edgecnn.errors import EdgecnnError, SettingError
from edgecnn.profile import (
    LatencyStats,
    ProfileConfig,
    _measure,
    _stats,
    profile_models,
    slowest_nodes,
    summarize_trace,
    write_plot,
)
from edgecnn.runtime import RunnerConfig

CPU = RunnerConfig(device="cpu")
FAST = ProfileConfig(batch_sizes=(1, 4), iterations=6, warmup=1, runner=CPU, op_profile_runs=3)
STAT_FIELDS = {
    "batch_size",
    "iterations",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "min_ms",
    "max_ms",
    "images_per_second",
    "peak_rss_mb",
}


@pytest.fixture
def two_models(linear_model, tmp_path):
    other = make_linear_onnx(tmp_path / "int8" / "model_int8.onnx", seed=1)
    return [linear_model, other]


def _check_stats(s: LatencyStats, batch_size: int, iterations: int):
    assert s.batch_size == batch_size and s.iterations == iterations
    assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.min_ms <= s.mean_ms <= s.max_ms
    assert s.images_per_second == pytest.approx(batch_size * 1000 / s.mean_ms, rel=1e-9)
    assert s.peak_rss_mb is not None and s.peak_rss_mb > 1


# -- library ----------------------------------------------------------------------------------
def test_report_has_stats_per_batch_size_warmup_and_speedup(two_models):
    report = profile_models(two_models, FAST)
    assert [m.label for m in report.models] == ["model.onnx", "model_int8.onnx"]
    for prof in report.models:
        assert prof.provider == "CPUExecutionProvider"
        assert [s.batch_size for s in prof.model_only] == [1, 4]
        for s in prof.model_only:
            _check_stats(s, s.batch_size, 6)
        assert prof.warmup.session_ms > 0 and prof.warmup.first_run_ms > 0
        assert prof.warmup.first_run_batch_size == 1 and prof.warmup.runs_per_batch_size == 1
        assert set(prof.warmup.mean_ms) == {1, 4}
        assert prof.end_to_end == () and prof.op_profile is None
    base, other = report.models
    assert base.speedup == {1: 1.0, 4: 1.0}
    for bs in (1, 4):
        assert other.speedup[bs] == pytest.approx(base.stats(bs).p50_ms / other.stats(bs).p50_ms)


def test_json_report_has_every_field(two_models, tmp_path):
    images = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3, size=10)
    config = ProfileConfig(
        batch_sizes=(1, 4),
        iterations=4,
        warmup=1,
        runner=CPU,
        images=images,
        op_profile=True,
        op_profile_runs=3,
        top_ops=3,
    )
    data = json.loads(json.dumps(profile_models(two_models, config).to_dict()))
    assert data["schema_version"] == 1
    machine = data["machine"]
    for key in (
        "cpu_model",
        "cpu_flags",
        "physical_cores",
        "logical_cores",
        "gpus",
        "onnxruntime",
        "providers_available",
        "python",
        "os",
    ):
        assert key in machine
    assert machine["physical_cores"] >= 1 and machine["logical_cores"] >= machine["physical_cores"]
    assert data["config"]["batch_sizes"] == [1, 4] and data["config"]["images"] == str(images)
    for model in data["models"]:
        assert model["provider"] == "CPUExecutionProvider"
        assert set(model["warmup"]) == {
            "session_ms",
            "first_run_ms",
            "first_run_batch_size",
            "runs_per_batch_size",
            "mean_ms",
        }
        assert [set(s) >= STAT_FIELDS for s in model["model_only"]] == [True, True]
        assert [s["batch_size"] for s in model["end_to_end"]] == [1, 4]
        for s in model["end_to_end"]:
            assert s["iterations"] == 4 and s["failed_images"] == 0 and s["decode_ms_per_image"] > 0
            assert s["images_per_second"] == pytest.approx(s["batch_size"] * 1000 / s["mean_ms"], rel=1e-9)
        assert len(model["op_profile"]) == 3 and model["op_profile_batch_size"] == 4
        assert set(model["op_profile"][0]) == {"op_type", "nodes", "ms", "percent", "providers"}
        assert len(model["slowest_nodes"]) == 3
        assert set(model["slowest_nodes"][0]) == {"name", "op_type", "output_shape", "ms", "percent", "provider"}
        assert set(model["speedup"]) == {"1", "4"}


def test_op_profile_lists_each_operator_and_node_of_the_unoptimized_graph(linear_model):
    config = ProfileConfig(
        batch_sizes=(2,),
        iterations=2,
        warmup=1,
        op_profile=True,
        op_profile_runs=4,
        runner=RunnerConfig(device="cpu", graph_optimization="disable"),
    )
    profiled = profile_models([linear_model], config).models[0]
    ops = profiled.op_profile
    assert {op.op_type for op in ops} == {"Cast", "Mul", "Flatten", "MatMul", "Add", "Softmax"}
    assert all(op.nodes == 1 and op.providers == ("CPUExecutionProvider",) for op in ops)
    assert sum(op.percent for op in ops) == pytest.approx(100.0)
    assert [op.ms for op in ops] == sorted((op.ms for op in ops), reverse=True)
    nodes = profiled.slowest_nodes
    assert {n.op_type for n in nodes} == {op.op_type for op in ops}  # one node per operator type here
    softmax = [n for n in nodes if n.op_type == "Softmax"][0]
    assert softmax.output_shape[0] == 2 and softmax.provider == "CPUExecutionProvider"  # batch 2 x classes


def test_the_trace_summaries_skip_warmup_runs_and_rank_operators_and_nodes_by_time():
    def node(name, op, ts, dur, provider="CPUExecutionProvider"):
        return {
            "cat": "Node",
            "name": f"{name}_kernel_time",
            "ts": ts,
            "dur": dur,
            "args": {"op_name": op, "provider": provider},
        }

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        node("conv1", "Conv", 1, 1000),  # the warm-up run: skipped
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        node("conv1", "Conv", 201, 30),
        node("conv2", "Conv", 231, 30),
        node("relu", "Relu", 261, 25),
        node("fc", "Gemm", 281, 15, "CUDAExecutionProvider"),
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
        node("conv1", "Conv", 401, 30),
        node("conv2", "Conv", 431, 30),
        node("relu", "Relu", 461, 25),
        node("fc", "Gemm", 481, 15, "CUDAExecutionProvider"),
        {"cat": "Node", "name": "conv1_fence_before", "ts": 402, "dur": 5, "args": {"op_name": "Conv"}},
    ]
    ops = summarize_trace(events, top=2, skip_runs=1)
    assert [op.op_type for op in ops] == ["Conv", "Relu"]
    conv = ops[0]
    assert (conv.op_type, conv.nodes, conv.providers) == ("Conv", 2, ("CPUExecutionProvider",))
    assert conv.ms == pytest.approx(0.060)  # 120 us over 2 measured runs
    assert conv.percent == pytest.approx(60.0)
    gemm = [op for op in summarize_trace(events, top=10, skip_runs=1) if op.op_type == "Gemm"][0]
    assert gemm.providers == ("CUDAExecutionProvider",) and gemm.percent == pytest.approx(15.0)

    nodes = slowest_nodes(events, top=3, skip_runs=1)  # the same trace, node by node
    assert [(n.name, n.op_type) for n in nodes] == [("conv1", "Conv"), ("conv2", "Conv"), ("relu", "Relu")]
    assert nodes[0].ms == pytest.approx(0.030) and nodes[0].percent == pytest.approx(30.0)
    assert nodes[0].output_shape == ()  # this trace names no shapes
    shaped = dict(events[3], args={"op_name": "Conv", "output_type_shape": [{"uint8": [1, 7, 7, 512]}]})
    assert slowest_nodes([shaped], top=1)[0].output_shape == (1, 7, 7, 512)


def test_random_inputs_rotate_and_are_never_one_tensor(linear_model, monkeypatch):
    from edgecnn.runtime import Runner

    seen = []
    original = Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, batch: (seen.append(batch), original(self, batch))[1])
    profile_models(
        [linear_model], ProfileConfig(batch_sizes=(2,), iterations=8, warmup=0, runner=CPU, distinct_inputs=4)
    )
    timed = seen[1:]  # the first is the first-run measurement
    assert len(timed) == 8
    assert len({id(b) for b in timed}) == 4
    assert all(timed[i] is not timed[i + 1] for i in range(len(timed) - 1))
    assert not np.array_equal(timed[0], timed[1])


def test_time_budget_runs_at_least_once_and_stops():
    config = ProfileConfig(seconds=0.02)
    times, images = _measure(lambda i: 3, config)
    assert len(times) >= 1 and images == 3 * len(times)


def test_stats_percentiles_on_known_latencies():
    s = _stats(2, [i / 1000 for i in range(1, 101)], images=200, peak_mb=10.0)
    assert (s.min_ms, s.max_ms, s.mean_ms) == pytest.approx((1.0, 100.0, 50.5))
    assert (s.p50_ms, s.p90_ms, s.p99_ms) == pytest.approx((50.5, 90.1, 99.01))
    assert s.images_per_second == pytest.approx(200 / 5.050)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"batch_sizes": (0,)}, "batch_sizes 0: expected positive integers"),
        ({"iterations": 0}, "iterations 0: expected 1 or more"),
        ({"seconds": -1}, "seconds -1: expected a time budget per batch size above 0"),
        ({"distinct_inputs": 1}, "distinct_inputs 1: expected 2 or more"),
        ({"decode_threads": 0}, "decode_threads 0: expected 1 or more"),
    ],
)
def test_bad_profile_settings_are_named_when_the_config_is_made(settings, message):
    with pytest.raises(SettingError, match=f"^{message}"):
        ProfileConfig(**settings)


def test_on_the_command_line_a_bad_setting_is_named_by_its_flag(linear_model):
    from typer.testing import CliRunner

    from edgecnn.cli import app

    result = CliRunner().invoke(app, ["profile", str(linear_model), "--seconds", "-1"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --seconds -1.0: expected a time budget per batch size above 0"


def test_an_image_folder_without_images_is_a_user_error(linear_model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgecnnError, match="no image files in it"):
        profile_models([linear_model], ProfileConfig(images=tmp_path / "empty", runner=CPU))


def test_images_that_do_not_decode_are_named_and_left_out_of_the_timings(linear_model, tmp_path):
    folder = make_image_folder(tmp_path / "mixed", per_class=1, size=8)
    good = sorted(folder.rglob("*.png"))
    for i in range(3):
        (folder / good[0].parent.name / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    cfg = ProfileConfig(batch_sizes=(1,), iterations=8, warmup=1, images=folder, runner=CPU)
    report = profile_models([linear_model], cfg)
    assert len(report.skipped_images) == 3 and all("not a decodable image" in s for s in report.skipped_images)
    (stats,) = report.models[0].end_to_end
    assert stats.failed_images == 0 and stats.images_per_second > 0
    res = CliRunner().invoke(app, ["profile", str(linear_model), "--images", str(folder), "--iterations", "3"])
    assert res.exit_code == 0 and "warning: skipped 3 image(s) that do not decode: " in res.stderr, res.output
    for path in good:
        path.unlink()
    with pytest.raises(EdgecnnError, match="none of the 3 images decodes"):
        profile_models([linear_model], cfg)


SVG = "{http://www.w3.org/2000/svg}"


def _svg_charts(path) -> dict[str, list[str]]:
    """The charts in an SVG file (title -> its line labels); ElementTree fails on anything not XML."""
    root = ElementTree.parse(path).getroot()
    assert root.tag == f"{SVG}svg" and float(root.get("width")) > 0 and float(root.get("height")) > 0
    return {
        chart.find(f"{SVG}title").text: [t.text for t in chart.iter(f"{SVG}text") if t.get("class") == "legend"]
        for chart in root.iter(f"{SVG}svg")
        if chart.get("class") == "chart"
    }


def test_plot_is_an_svg_of_latency_and_throughput_with_a_line_per_model(two_models, tmp_path):
    report = profile_models(two_models, FAST)
    path = write_plot(report, tmp_path / "plots" / "latency.svg")
    assert _svg_charts(path) == {
        "p50 latency per batch": ["model.onnx", "model_int8.onnx"],
        "throughput": ["model.onnx", "model_int8.onnx"],
    }
    # each line has one marker per batch size: 2 models x 2 batch sizes, in each chart
    assert len(list(ElementTree.parse(path).getroot().iter(f"{SVG}circle"))) == 2 * 2 * 2
    assert [p.name for p in path.parent.iterdir()] == ["latency.svg"]  # written atomically: no temporary left


def test_a_plot_name_not_ending_in_svg_is_a_setting_error_and_nothing_is_written(two_models, tmp_path):
    report = profile_models(two_models, FAST)
    with pytest.raises(SettingError, match=r"plot .*p\.png: expected a file name ending in \.svg") as caught:
        write_plot(report, tmp_path / "plots" / "p.png")
    assert caught.value.setting == "plot"
    assert not (tmp_path / "plots").exists()


# -- CLI --------------------------------------------------------------------------------------
def test_cli_writes_json_and_plot_and_prints_a_table(two_models, tmp_path):
    out, svg = tmp_path / "report.json", tmp_path / "report.svg"
    res = CliRunner().invoke(
        app,
        [
            "profile",
            *map(str, two_models),
            "--batch-sizes",
            "1,2",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--plot",
            str(svg),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [m["label"] for m in data["models"]] == ["model.onnx", "model_int8.onnx"]
    assert [s["iterations"] for s in data["models"][1]["model_only"]] == [3, 3]
    assert list(_svg_charts(svg)) == ["p50 latency per batch", "throughput"]
    from edgecnn.charts import profile_charts  # what `edgecnn report` draws from this profile.json

    assert all(chart in svg.read_text() for chart in profile_charts(data["models"]))
    assert f"wrote {svg}" in res.stdout
    assert "model only: latency per batch in ms" in res.stdout and "speedup" in res.stdout
    assert "model_int8.onnx: ran on CPUExecutionProvider" in res.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-sizes", "1,x"], "error: --batch-sizes 1,x: expected comma-separated integers"),
        (["--seconds", "0"], "error: --seconds 0.0: expected a time budget per batch size above 0"),
        (["--cudnn-algo-search", "fast"], "error: --cudnn-algo-search FAST: expected one of"),
    ],
)
def test_cli_user_mistakes_are_one_line_and_exit_1(linear_model, extra, message):
    res = CliRunner().invoke(app, ["profile", str(linear_model), "--device", "cpu", *extra])
    assert res.exit_code == 1
    assert res.stderr.startswith(message) and res.stderr.count("\n") == 1


def test_cli_plot_writes_an_svg_without_importing_matplotlib(two_models, tmp_path):
    svg = tmp_path / "plot.svg"
    code = (
        "import sys\nfrom edgecnn.cli import app\n"
        f"sys.argv = ['edgecnn', 'profile', *{list(map(str, two_models))!r}, '--batch-sizes', '1,2',"
        f" '--iterations', '3', '--warmup', '1', '--device', 'cpu', '--plot', {str(svg)!r}]\n"
        "try:\n    app()\nfinally:\n"
        "    print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stdout, done.stdout  # matplotlib is installed here, and still not imported
    assert _svg_charts(svg) == {
        "p50 latency per batch": ["model.onnx", "model_int8.onnx"],
        "throughput": ["model.onnx", "model_int8.onnx"],
    }


def test_cli_plot_name_not_ending_in_svg_fails_in_one_line_before_measuring(linear_model, tmp_path):
    res = CliRunner().invoke(
        app, ["profile", str(linear_model), "--device", "cpu", "--plot", str(tmp_path / "out" / "p.png")]
    )
    assert res.exit_code == 1
    assert (
        res.stderr
        == f"error: --plot {tmp_path / 'out' / 'p.png'}: expected a file name ending in .svg (the plot is an SVG image)\n"
    )
    assert "ran on" not in res.output and not (tmp_path / "out").exists()  # nothing measured, no folder made


def test_cli_missing_model_is_a_user_error(tmp_path):
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "missing.onnx"), "--device", "cpu"])
    assert res.exit_code == 1 and "no such model file" in res.stderr


def test_an_unwritable_json_path_fails_before_profiling_with_one_line(linear_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(app, ["profile", str(linear_model), "--device", "cpu", "--json", str(blocker / "r.json")])
    assert res.exit_code == 1
    assert "cannot write" in res.output and "Traceback" not in res.output
    assert "ran on" not in res.output  # nothing was measured
