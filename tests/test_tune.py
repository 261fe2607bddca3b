"""edgecnn tune: verified candidates, deploy.json, and the commands that use the tuned configuration."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecnn import tune as tune_module
from edgecnn.cli import app
from edgecnn.errors import ModelError, SettingError
from edgecnn.providers import PROVIDERS
from edgecnn.ort import import_onnxruntime
from edgecnn.runtime import Runner, RunnerConfig
from edgecnn.tune import Candidate, TuneConfig, tune
from edgecnn.metadata import recommended_file
from edgecnn.tuned_config import DEPLOY_FILE, read_deploy, resolve, runner_config_of, runner_settings
from conftest import write_image
from trained_models import copy_export

OPENVINO_UNUSABLE = PROVIDERS["openvino"].unusable(import_onnxruntime())  # None where it runs; else the true reason
needs_openvino = pytest.mark.skipif(OPENVINO_UNUSABLE is not None, reason=f"OpenVINO provider: {OPENVINO_UNUSABLE}")


@pytest.fixture(scope="module")
def exported(exported_digits):
    return exported_digits


@pytest.fixture(scope="module")
def tuned_cpu(exported, tmp_path_factory):
    """The export tuned on the CPU provider alone."""
    folder = copy_export(exported, tmp_path_factory.mktemp("tuned") / "digits")
    return folder, tune(TuneConfig(str(folder), devices=("cpu",), time_budget_s=30))


def test_tune_on_the_cpu_verifies_every_candidate_and_writes_deploy_json(tuned_cpu):
    folder, result = tuned_cpu
    deploy = json.loads((folder / DEPLOY_FILE).read_text())

    names = [c["name"] for c in deploy["candidates"]]
    # today's default is the export's recommended variant, which the export chose by measuring: either may win
    default_variant = deploy["default"]["variant"]
    assert deploy["default"]["file"] == recommended_file(folder).name
    assert names[0] == f"{default_variant} cpu (today's default)" and deploy["default"]["default"] is True
    assert {
        "int8 cpu spinning",
        "int8 cpu no spinning",
        "fp32 cpu spinning",
        "fp32 cpu no spinning",
        "int8 cpu spinning + zero-point shift",
    } - {f"{default_variant} cpu spinning"} <= set(names)
    for c in deploy["candidates"]:
        if c["status"] == "skipped":  # cannot apply on this machine (another CPU, no device): never a failure
            assert c["why"] and not c["chosen"], c
            continue
        assert c["status"] == "ok", c
        assert c["verified"] is True and c["accuracy"] >= 0.98 and c["p50_ms"] > 0 and c["images_per_s"] > 0
    assert sum(c["chosen"] for c in deploy["candidates"]) == 1
    chosen = deploy["chosen"]
    assert chosen["chosen"] and chosen["verified"] and (folder / chosen["file"]).is_file()
    # never slower than the default when both were measured again side by side
    assert chosen["p50_ms"] <= deploy["default"]["p50_ms"]
    assert deploy["machine"]["physical_cores"] >= 1 and deploy["machine"]["versions"]["onnxruntime"]
    assert result.speedup >= 1.0 and deploy["objective"] == "latency"


def test_the_zero_point_shift_gives_the_same_answers(exported, tmp_path):
    from edgecnn.provider_rewrites import REWRITES, write_rewritten

    shifted = tmp_path / "model.int8.shifted.onnx"
    assert (
        write_rewritten(REWRITES["shifted"], exported / "model.int8.onnx", shifted) == 2
    )  # both convs of the digits CNN
    batch = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    plain = Runner(exported / "model.int8.onnx", RunnerConfig(device="cpu")).run(batch)
    np.testing.assert_array_equal(Runner(shifted, RunnerConfig(device="cpu")).run(batch), plain)


def _qdq_pointwise_model():
    """x -> Q -> DQ -> {1x1 stride 2, 1x1 stride 2, 1x1 stride 2 padded, 3x3 stride 2} -> concat: a
    ResNet downsampling block's shape, with one convolution the rewrite must leave alone (padded)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, array):
        return numpy_helper.from_array(array, name)

    inits = [
        init("s", np.array(0.05, np.float32)),
        init("z", np.array(3, np.uint8)),
        init("ws", np.array(0.01, np.float32)),
        init("wz", np.array(0, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
    ]
    outs = []
    for i, (k, pads) in enumerate([(1, 0), (1, 0), (1, 1), (3, 1)]):
        inits.append(init(f"w{i}", rng.integers(-127, 128, (4, 3, k, k)).astype(np.int8)))
        nodes.append(helper.make_node("DequantizeLinear", [f"w{i}", "ws", "wz"], [f"wd{i}"]))
        nodes.append(
            helper.make_node("Conv", ["xd", f"wd{i}"], [f"y{i}"], kernel_shape=[k, k], strides=[2, 2], pads=[pads] * 4)
        )
        outs.append(f"y{i}" if pads == 0 else f"y{i}_crop")
        if pads:  # crop to the unpadded output size so the four can be concatenated
            nodes.append(helper.make_node("Slice", [f"y{i}", f"st{i}", f"en{i}", f"ax{i}"], [f"y{i}_crop"]))
            inits += [
                init(f"st{i}", np.array([0, 0], np.int64)),
                init(f"en{i}", np.array([5, 5], np.int64)),
                init(f"ax{i}", np.array([2, 3], np.int64)),
            ]
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=1))
    graph = helper.make_graph(
        nodes,
        "downsample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 5, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_strided_pointwise_subsample_is_exact_and_leaves_padded_convolutions_alone():
    from edgecnn.provider_rewrites import subsample_strided_pointwise

    # the two unpadded 1x1 convolutions
    rewritten, answers = _rewritten_and_exact(_qdq_pointwise_model(), subsample_strided_pointwise, changed=2)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Slice") == 1 + 2  # one shared subsample, and the two crops that were there
    assert ops.count("DequantizeLinear") == 2 + 4  # the original (the padded ones read it) and the new one
    convs = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    strides = [list(next(a.ints for a in n.attribute if a.name == "strides")) for n in convs]
    assert strides == [[1, 1], [1, 1], [2, 2], [2, 2]]
    assert answers.shape == (2, 16, 5, 5)


def _qdq_conv_model(channels, size, kernel, stride, pads, group=1, weight_zero_points=None, quantized_output=True):
    """x -> Q -> DQ -> Conv(int8 weights through a per-channel DequantizeLinear) -> Q -> y (uint8),
    with a dynamic batch: a network's first convolution after INT8 export, which onnxruntime
    runs as one integer QLinearConv (its answers then exact whatever order it sums in)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(channels * 100 + kernel)
    out = 5
    zero_points = np.zeros(out, np.int8) if weight_zero_points is None else np.array(weight_zero_points, np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.uint8), "z"),
        numpy_helper.from_array(rng.integers(-120, 120, (out, channels // group, kernel, kernel)).astype(np.int8), "w"),
        numpy_helper.from_array(rng.uniform(0.005, 0.02, out).astype(np.float32), "ws"),
        numpy_helper.from_array(zero_points, "wz"),
        numpy_helper.from_array(rng.normal(0, 1, out).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.2, np.float32), "ys"),
        numpy_helper.from_array(np.array(128, np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node(
            "Conv",
            ["xd", "wd", "b"],
            ["yf" if quantized_output else "y"],
            kernel_shape=[kernel] * 2,
            strides=[stride] * 2,
            group=group,
            **({"auto_pad": pads} if isinstance(pads, str) else {"pads": pads}),
        ),
    ]
    if quantized_output:
        nodes.append(helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, *size])],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.UINT8 if quantized_output else TensorProto.FLOAT, ["n", 5, "h", "w"]
            )
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rewritten_and_exact(model, rewrite, changed: int = 1):
    """Apply `rewrite` to a copy of `model`, assert that it changed `changed` convolutions, check
    the copy, and assert that onnxruntime gives the same answers bit for bit on an input of batch
    2; returns (the copy, its answers)."""
    import onnx
    from edgecnn.ort import import_onnxruntime

    ort = import_onnxruntime()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert rewrite(rewritten) == changed
    onnx.checker.check_model(rewritten, full_check=True)
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).normal(0, 3, shape).astype(np.float32)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (model, rewritten)
    ]
    np.testing.assert_array_equal(run[1], run[0])
    return rewritten, run[1]


@pytest.mark.parametrize(
    "channels, size, kernel, stride, pads, zero_points",
    [
        (3, (17, 17), 7, 2, [3, 3, 3, 3], None),  # ResNet50's stem, on an odd size
        (1, (10, 9), 3, 2, [1, 0, 0, 1], None),  # uneven padding, one channel
        (2, (17, 14), 5, 3, [0, 0, 0, 0], [1, -2, 0, 3, -1]),  # stride 3, weights with zero points
        (3, (16, 16), 3, 2, "VALID", None),  # padding said by auto_pad
    ],
)
def test_the_space_to_depth_stem_is_exact_and_runs_at_stride_1(channels, size, kernel, stride, pads, zero_points):
    from edgecnn.provider_rewrites import space_to_depth_stems

    model = _qdq_conv_model(channels, size, kernel, stride, pads, weight_zero_points=zero_points)
    rewritten, _ = _rewritten_and_exact(model, space_to_depth_stems)
    (conv,) = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    attrs = {a.name: list(a.ints) for a in conv.attribute if a.ints}
    deeper = -(-kernel // stride)
    assert attrs["strides"] == [1, 1] and attrs["pads"] == [0, 0, 0, 0] and attrs["kernel_shape"] == [deeper] * 2
    weights = next(i for i in rewritten.graph.initializer if i.name == "w")
    assert list(weights.dims) == [5, channels * stride * stride, deeper, deeper]
    assert [n.op_type for n in rewritten.graph.node].count("DequantizeLinear") == 2  # the old input one is gone
    assert all(a.name != "auto_pad" for a in conv.attribute)


@pytest.mark.parametrize(
    "channels, stride, group, why",
    [(16, 2, 1, "too many channels to be thin"), (3, 1, 1, "not strided"), (4, 2, 2, "grouped")],
)
def test_the_space_to_depth_stem_leaves_other_convolutions_alone(channels, stride, group, why):
    from edgecnn.provider_rewrites import space_to_depth_stems

    model = _qdq_conv_model(channels, (12, 12), 3, stride, [1, 1, 1, 1], group=group)
    assert space_to_depth_stems(model) == 0, why


def test_the_space_to_depth_stem_leaves_a_float_convolution_and_weights_others_read_alone():
    from onnx import helper

    from edgecnn.provider_rewrites import space_to_depth_stems

    float_out = _qdq_conv_model(3, (12, 12), 7, 2, [3, 3, 3, 3], quantized_output=False)
    assert space_to_depth_stems(float_out) == 0  # summed in float, another order would round differently
    shared = _qdq_conv_model(3, (12, 12), 7, 2, [3, 3, 3, 3])
    shared.graph.output.append(helper.make_empty_tensor_value_info("wd"))  # the dequantized weights are an output
    assert space_to_depth_stems(shared) == 0


def test_the_subsample_rewrite_has_nothing_to_do_on_the_digits_cnn(exported, tmp_path):
    from edgecnn.provider_rewrites import REWRITES, write_rewritten

    assert write_rewritten(REWRITES["subsampled"], exported / "model.int8.onnx", tmp_path / "x.onnx") == 0
    assert not (tmp_path / "x.onnx").exists()


def test_deploy_json_round_trips_to_the_same_runner_config():
    config = RunnerConfig(
        device="openvino:CPU",
        intra_op_threads=2,
        allow_spinning=False,
        ep_options=(("precision", "f32"), ("hint", "THROUGHPUT")),
    )
    settings = json.loads(json.dumps(runner_settings(config)))
    assert runner_config_of({"runner": settings}) == config


def test_predict_profile_and_verify_given_the_folder_use_the_tuned_configuration_and_say_so(tuned_cpu, tmp_path):
    folder, result = tuned_cpu
    image = write_image(tmp_path / "seven.png", np.full((8, 8), 200, np.uint8))
    expected = f"using the tuned configuration from {folder / DEPLOY_FILE}: {result.chosen.name}"
    for args in (
        ["predict", str(folder), str(image)],
        ["verify", str(folder)],
        ["profile", str(folder), "--batch-sizes", "1", "--iterations", "2", "--warmup", "1"],
    ):
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0, out.output
        assert out.stderr.splitlines()[0] == expected
        assert f"{result.chosen.file.split('/')[-1]}: ran on CPUExecutionProvider" in out.stderr


def test_serve_given_the_folder_serves_the_tuned_file_with_its_settings(tuned_cpu, monkeypatch):
    import edgecnn.serve.repository as repository
    import edgecnn.serve.server as serve_module
    from edgecnn.errors import EdgecnnError

    folder, result = tuned_cpu
    seen = {}
    real_load = repository.load
    monkeypatch.setattr(repository, "load", lambda source, config: seen.setdefault("loaded", real_load(source, config)))

    def stop_before_listening(host, port):  # the models are loaded and checked: that is what is tested here
        raise EdgecnnError("stopped by the test before listening")

    monkeypatch.setattr(serve_module, "_listen", stop_before_listening)
    out = CliRunner().invoke(app, ["serve", str(folder), "--threads", "1"])
    assert out.exit_code == 1 and "stopped by the test before listening" in out.output, out.output
    assert out.stderr.startswith(f"using the tuned configuration from {folder / DEPLOY_FILE}")
    assert "(kept as this command sets them: allow_spinning, intra_op_threads)" in out.stderr
    runner = seen["loaded"].runner
    assert runner.path.name == result.chosen.file.split("/")[-1]
    assert runner.config.intra_op_threads == 1  # typed flags win
    assert runner.config.allow_spinning is False  # the server keeps its cores for HTTP unless --spin
    assert runner.config.device == result.chosen.runner["device"]


def test_typed_flags_win_over_the_tuned_ones(tuned_cpu):
    folder, _ = tuned_cpu
    resolved = resolve(folder, RunnerConfig(device="cpu", intra_op_threads=1), explicit=frozenset({"intra_op_threads"}))
    assert resolved.tuned and resolved.runner.intra_op_threads == 1


def test_on_another_machine_the_tuning_is_not_used_and_a_warning_says_why(tuned_cpu, tmp_path):
    folder = copy_export(tuned_cpu[0], tmp_path / "elsewhere")
    deploy = json.loads((folder / DEPLOY_FILE).read_text())
    deploy["machine"]["cpu_model"] = "Some Other CPU"
    (folder / DEPLOY_FILE).write_text(json.dumps(deploy))

    resolved = resolve(folder, RunnerConfig())
    assert not resolved.tuned and resolved.warning and resolved.runner == RunnerConfig()
    assert resolved.note.startswith(
        f"warning: {folder / DEPLOY_FILE} was tuned on another machine (cpu_model: 'Some Other CPU'"
    )
    assert resolved.path.name in ("model.onnx", "model.int8.onnx")  # the export's recommended file


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": 99}),
        json.dumps([1, 2]),
        json.dumps({"format": 1, "machine": {}, "chosen": {"file": "../../etc/passwd", "runner": {}}}),
    ],
)
def test_a_corrupt_or_foreign_deploy_json_is_a_one_line_error_naming_the_file(exported, tmp_path, content):
    folder = copy_export(exported, tmp_path / "bad")
    (folder / DEPLOY_FILE).write_text(content)
    with pytest.raises(ModelError, match=str(folder / DEPLOY_FILE)):
        read_deploy(folder)
    out = CliRunner().invoke(app, ["predict", str(folder), str(folder / "model.onnx")])
    assert out.exit_code == 1 and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("threads", [-4, 0, 3000, 1e9, 2.0, True, "2"])
def test_a_tuned_thread_count_no_machine_has_is_named_as_deploy_json_names_it(threads):
    with pytest.raises(
        ModelError,
        match=r"^deploy.json: (chosen\.runner\.intra_op_threads .*: expected a whole number from 1 to 1024|a tuned setting is malformed)",
    ):
        runner_config_of({"runner": {"intra_op_threads": threads}})


def test_tuning_an_old_export_without_verification_set_says_how_to_make_one(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "old")
    (folder / "verification.npz").unlink()
    out = CliRunner().invoke(app, ["tune", str(folder)])
    assert out.exit_code == 1 and "has no verification set" in out.stderr and "edgecnn export" in out.stderr


def _fake_python(tmp_path, body: str) -> str:
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    "body, why", [("kill -SEGV $$", "crashed (signal 11)"), ("sleep 30", "no answer within 1 s (hung); killed")]
)
def test_a_provider_that_crashes_or_hangs_fails_its_candidate_only(exported, tmp_path, monkeypatch, body, why):
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, body))
    cand = Candidate("int8 openvino:CPU", "int8", str(exported / "model.int8.onnx"), runner_settings(RunnerConfig()))
    tune_module._measure(cand, exported, batch=4, seconds=0.1, timeout=1)
    assert cand.status == "failed" and cand.why.startswith(why)


class _FakeMachine:
    """tune's measurements on a machine whose timings a test decides (noise cannot be had on demand):
    `true_ms` per candidate name (4 ms otherwise), each first measurement multiplied by `first_x`,
    `fails` the measurement numbers (1-based) that crash; every measurement takes 1 s of a fake clock."""

    def __init__(self, true_ms=None, first_x=None, fails=()):
        self.true_ms, self.first_x, self.fails = true_ms or {}, first_x or {}, set(fails)
        self.order, self.verified, self.now = [], [], 0.0

    def perf_counter(self) -> float:
        return self.now

    def measure(self, cand, model_dir, batch, seconds, timeout=None, verify=True):
        self.now += 1.0
        self.order.append(cand.name)
        self.verified.append(verify)
        if len(self.order) in self.fails:
            cand.status, cand.why = "failed", "crashed (signal 11)"
            return
        first = self.order.count(cand.name) == 1
        ms = self.true_ms.get(cand.name, 4.0) * (self.first_x.get(cand.name, 1) if first else 1)
        cand.runs.append((ms, 1000 / ms))
        cand.p50_ms, cand.images_per_s = ms, 1000 / ms
        if verify:
            cand.status, cand.verified = "ok", True


def _tune_on(machine: _FakeMachine, folder, monkeypatch, budget: float):
    monkeypatch.setattr(tune_module, "_measure", machine.measure)
    monkeypatch.setattr(tune_module, "time", machine)
    return tune(TuneConfig(str(folder), devices=("cpu",), rewrites=False, time_budget_s=budget))


def test_one_measurement_slowed_by_a_busy_moment_cannot_sink_the_fastest_candidate(exported, tmp_path, monkeypatch):
    """The truly fastest candidate's first measurement comes out 100x slow (a busy moment). Every
    candidate is timed again, without a second verification, and stands at its best measurement,
    so it is still the one chosen."""
    machine = _FakeMachine(true_ms={"fp32 cpu no spinning": 1.0}, first_x={"fp32 cpu no spinning": 100})
    folder = copy_export(exported, tmp_path / "busy")
    result = _tune_on(machine, folder, monkeypatch, budget=600)

    timed = [c.name for c in result.candidates if c.status == "ok"]
    by_first_run = [name for name in timed if name != "fp32 cpu no spinning"] + ["fp32 cpu no spinning"]
    assert machine.order[: 2 * len(timed)] == timed + by_first_run  # the second pass: fastest first measurement first
    assert machine.verified[: len(timed)] == [True] * len(timed) and not any(machine.verified[len(timed) :])
    assert result.chosen.name == "fp32 cpu no spinning" and result.chosen.p50_ms == 1.0
    assert result.chosen.runs[0][0] == 100.0  # the slow measurement is kept on record, not counted
    assert json.loads((folder / DEPLOY_FILE).read_text())["chosen"]["name"] == "fp32 cpu no spinning"


def test_the_second_pass_goes_only_as_far_as_the_budget_leaves_time_to_confirm(exported, tmp_path, monkeypatch):
    """Each measurement costs 1 s; the budget leaves room for the first pass, two more and the four
    measurements that confirm the winner beside the default: the two most promising are re-measured,
    and the search ends within its budget."""
    machine = _FakeMachine(true_ms={"int8 cpu no spinning": 3.0, "fp32 cpu 1 thread": 3.5})
    todo = tune_module.candidates(
        exported, TuneConfig(str(exported), devices=("cpu",), rewrites=False), import_onnxruntime()
    )
    confirming = 2 * tune_module.CONFIRM_ROUNDS
    budget = len(todo) + 2 + confirming
    result = _tune_on(machine, copy_export(exported, tmp_path / "short"), monkeypatch, budget=budget)

    default = result.default.name
    assert (
        machine.order[len(todo) :]
        == ["int8 cpu no spinning", "fp32 cpu 1 thread"]
        + [
            default,
            "int8 cpu no spinning",
        ]
        * tune_module.CONFIRM_ROUNDS
    )
    assert result.chosen.name == "int8 cpu no spinning" and machine.now == budget
    once = [c for c in result.candidates if c.name not in ("int8 cpu no spinning", "fp32 cpu 1 thread", default)]
    assert once and all(len(c.runs) == 1 for c in once)  # the rest stand on one measurement, on record


def test_a_candidate_that_crashes_when_measured_again_is_failed_but_the_default_keeps_its_numbers(
    exported, tmp_path, monkeypatch
):
    """The second pass re-measures fastest first: the fastest (int8 no spinning) crashes, then the
    default (4 ms, second in line) crashes too. The first is failed, saying when; the default,
    which is what runs without tuning, keeps its first measurement and tuning still ends."""
    machine = _FakeMachine(true_ms={"int8 cpu no spinning": 3.0})
    todo = tune_module.candidates(
        exported, TuneConfig(str(exported), devices=("cpu",), rewrites=False), import_onnxruntime()
    )
    machine.fails = {len(todo) + 1, len(todo) + 2}
    result = _tune_on(machine, copy_export(exported, tmp_path / "crash"), monkeypatch, budget=600)

    crashed = next(c for c in result.candidates if c.name == "int8 cpu no spinning")
    assert crashed.status == "failed" and crashed.why == "measured again: crashed (signal 11)"
    assert result.default.status == "ok" and result.default.runs[0] == (4.0, 250.0)
    assert result.chosen.status == "ok" and result.chosen.name != crashed.name


def test_a_candidate_whose_session_fails_is_reported_and_the_search_goes_on(exported):
    cand = Candidate(
        "fp32 bad",
        "fp32",
        str(exported / "model.onnx"),
        runner_settings(RunnerConfig(device="cpu", ep_options=(("precision", "f32"),))),
    )
    tune_module._measure(cand, exported, batch=4, seconds=0.1)
    assert cand.status == "failed" and cand.why == "--ep-option precision: cpu has no such setting (it takes: none)"


@needs_openvino
def test_tune_with_the_openvino_provider_verifies_its_candidates_too(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "ov")
    result = tune(TuneConfig(str(folder), devices=("cpu", "openvino"), rewrites=False, time_budget_s=40))
    ov = [c for c in result.candidates if c.provider.startswith("openvino")]
    assert {c.name for c in ov} >= {"fp32 openvino:CPU f32 latency", "int8 openvino:CPU device throughput"}
    for c in ov:
        assert c.status in ("ok", "outside budget"), (c.name, c.why)
        assert c.accuracy is not None and c.p50_ms > 0
    assert result.chosen.status == "ok" and result.chosen.verified


@needs_openvino
def test_each_rewrite_is_tried_with_its_own_provider_and_fails_cleanly_where_it_has_nothing_to_do(exported, tmp_path):
    todo = tune_module.candidates(
        exported, TuneConfig(str(exported), devices=("cpu", "openvino")), import_onnxruntime()
    )
    rewritten = {c.name: c for c in todo if c.rewrite}
    assert {c.rewrite for c in rewritten.values() if c.provider == "cpu"} == {"shifted", "s2d"}
    assert {c.rewrite for c in rewritten.values() if c.provider.startswith("openvino")} == {"subsampled"}
    assert "int8 openvino:CPU device latency + strided 1x1 subsample" in rewritten

    written = tune_module._prepare_rewrites(todo, tmp_path, log=lambda _m: None)
    assert {p.rsplit("/", 1)[1] for p in written} == {"model.int8.shifted.onnx"}
    for c in rewritten.values():
        if c.rewrite == "subsampled":  # the digits CNN has no strided 1x1 convolution
            assert c.status == "skipped" and c.why == "no quantized strided 1x1 convolution to rewrite"
        elif c.rewrite == "s2d":  # nor a strided stem
            assert c.status == "skipped" and c.why.startswith("no quantized strided convolution over a few channels")
        else:
            assert c.status == "not measured" and c.file == str(tmp_path / "model.int8.shifted.onnx")


def test_a_rewrite_meant_for_other_cpus_is_skipped_with_the_reason_never_failed(exported, tmp_path, monkeypatch):
    from edgecnn import provider_rewrites as rewrites

    monkeypatch.setattr(rewrites, "cpu_architecture", lambda: "aarch64")  # what an ARM board reports
    todo = tune_module.candidates(exported, TuneConfig(str(exported), devices=("cpu",)), import_onnxruntime())
    assert tune_module._prepare_rewrites(todo, tmp_path, log=lambda _m: None) == set()
    shifted = [c for c in todo if c.rewrite == "shifted"]
    assert shifted and all(c.status == "skipped" for c in shifted)
    assert shifted[0].why == (
        "the zero-point shift rewrite is for x86-64 CPUs (onnxruntime's x86 VNNI and AMX integer kernels; "
        "it pays off with AMX); this CPU is aarch64"
    )


def test_every_rewrite_names_the_cpus_it_is_for():
    from edgecnn.provider_rewrites import REWRITES, cpu_architecture

    assert cpu_architecture() == cpu_architecture().lower() and cpu_architecture() not in ("amd64", "arm64")
    for rewrite in REWRITES.values():
        assert rewrite.machines and rewrite.cpus
        assert rewrite.not_here(rewrite.machines[0]) is None
        assert rewrite.not_here("riscv64").endswith("this CPU is riscv64")


def test_a_rewrite_whose_onnx_package_is_missing_is_skipped_with_how_to_install_it(exported, tmp_path, monkeypatch):
    from edgecnn import provider_rewrites as rewrites

    monkeypatch.setitem(sys.modules, "onnx", None)  # a device install: onnxruntime without the onnx package
    monkeypatch.setattr(rewrites, "cpu_architecture", lambda: "x86_64")  # a CPU the rewrite is for
    todo = tune_module.candidates(exported, TuneConfig(str(exported), devices=("cpu",)), import_onnxruntime())
    tune_module._prepare_rewrites(todo, tmp_path, log=lambda _m: None)
    shifted = [c for c in todo if c.rewrite == "shifted"]
    assert shifted and {(c.status, c.why) for c in shifted} == {
        ("skipped", 'the zero-point shift rewrite needs the onnx package: pip install "edgecnn[tune]"')
    }


def test_an_installed_provider_that_sees_no_device_is_a_skipped_candidate_with_the_reason(exported, monkeypatch):
    from edgecnn.providers import Provider

    class Blind(Provider):  # a plugin that is installed but finds no device on this machine
        key, ort_name, extra = "blind", "BlindExecutionProvider", "blind"

        def present(self, ort):
            return True

        def devices(self, ort):
            return []

    monkeypatch.setitem(PROVIDERS, "blind", Blind())
    todo = tune_module.candidates(exported, TuneConfig(str(exported), rewrites=False), import_onnxruntime())
    blind = [c for c in todo if c.provider == "blind"]
    assert [(c.status, c.why) for c in blind] == [
        ("skipped", "installed, but BlindExecutionProvider sees no device on this machine")
    ]
    assert all(c.status != "failed" for c in todo)


def test_an_unknown_provider_to_tune_on_is_a_setting_error_listing_every_provider(exported):
    with pytest.raises(SettingError, match="^devices npu: expected one of cpu, cuda, tensorrt, openvino$"):
        tune_module.candidates(exported, TuneConfig(str(exported), devices=("npu",)), import_onnxruntime())
