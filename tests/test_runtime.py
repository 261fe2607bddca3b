"""The onnxruntime runner: numerics, providers, foreign models, image inputs, threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import linear_reference, make_linear_onnx, write_image

from edgecnn.errors import DeviceError, EdgecnnError, ModelError, SettingError
from edgecnn.runtime import (
    ForeignModelSettings,
    Runner,
    RunnerConfig,
    import_onnxruntime,
    parse_class_names,
    parse_image_size,
    physical_cores,
    top_k,
)

HAS_CUDA = "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
CPU = RunnerConfig(device="cpu")


def _random_batch(n, shape=(8, 8, 1), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _edit_input(path: Path, out: Path, elem_type=None, batch_dim=None) -> Path:
    """Copy a `make_linear_onnx` model with its input's element type or batch dimension changed."""
    import onnx

    model = onnx.load(str(path))
    tensor_type = model.graph.input[0].type.tensor_type
    if elem_type is not None:
        tensor_type.elem_type = elem_type
    if batch_dim is not None:
        tensor_type.shape.dim[0].ClearField("dim_param")
        tensor_type.shape.dim[0].dim_value = batch_dim
    onnx.save(model, str(out))
    return out


# -- numerics ---------------------------------------------------------------------------------
def test_runner_output_equals_the_numpy_reference(linear_model):
    runner = Runner(linear_model, CPU)
    batch = _random_batch(5)
    probs = runner.predict(list(batch))
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, linear_reference(linear_model, batch), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_more_threads_than_cpus_is_said_in_the_line_that_says_what_ran(linear_model):
    from edgecnn.machine import available_cpus

    cpus = available_cpus()
    crowded = Runner(linear_model, RunnerConfig(device="cpu", intra_op_threads=cpus + 1)).one_line()
    assert f"{cpus + 1} threads on {cpus} CPU(s) here take turns" in crowded
    assert "take turns" not in Runner(linear_model, RunnerConfig(device="cpu", intra_op_threads=1)).one_line()


def test_runner_reads_edgecnn_metadata_from_the_file(linear_model):
    runner = Runner(linear_model, CPU)
    assert runner.metadata.class_names == ("a", "b", "c")
    assert runner.metadata.image_size == (8, 8)
    assert runner.metadata.channels == 1
    assert runner.foreign is False
    assert (runner.input_name, runner.output_name) == ("image", "probabilities")


def test_nchw_model_gets_its_input_transposed(tmp_path):
    path = make_linear_onnx(tmp_path / "nchw.onnx", channels=3, layout="nchw")
    runner = Runner(path, CPU)
    images = _random_batch(3, (8, 8, 3))
    batch = runner.prepare(list(images))
    assert batch.shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(batch, images.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(runner.run(batch), linear_reference(path, batch), rtol=1e-5, atol=1e-6)


def test_run_rejects_a_batch_of_the_wrong_shape(linear_model):
    runner = Runner(linear_model, CPU)
    with pytest.raises(EdgecnnError, match=r"input shape \[2, 8, 8, 3\] does not match the model's \[N, 8, 8, 1\]"):
        runner.run(np.zeros((2, 8, 8, 3), np.uint8))


def test_model_with_a_fixed_batch_of_one_runs_any_batch_in_chunks(linear_model, tmp_path):
    import onnx

    path = _edit_input(linear_model, tmp_path / "b1.onnx", batch_dim=1)
    runner = Runner(path, CPU)
    assert runner.fixed_batch == 1
    batch = _random_batch(5)
    np.testing.assert_allclose(runner.run(batch), linear_reference(linear_model, batch), rtol=1e-5, atol=1e-6)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_runner_is_thread_safe(linear_model):
    runner = Runner(linear_model, CPU)
    batches = [_random_batch(4, seed=s) for s in range(16)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(runner.run, batches))
    for batch, probs in zip(batches, results):
        np.testing.assert_allclose(probs, linear_reference(linear_model, batch), rtol=1e-5, atol=1e-6)


def test_top_k_returns_largest_first_and_clips_k():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    idx, val = top_k(probs, 2)
    assert idx.tolist() == [[1, 2], [0, 2]]
    np.testing.assert_allclose(val, [[0.7, 0.2], [0.5, 0.3]])
    idx, _ = top_k(probs, 10)
    assert idx.shape == (2, 3)


# -- providers --------------------------------------------------------------------------------
def test_cpu_device_uses_only_the_cpu_provider_and_describes_it(linear_model):
    runner = Runner(linear_model, CPU)
    assert runner.provider == "CPUExecutionProvider"
    assert runner.providers == ["CPUExecutionProvider"]
    info = runner.describe()
    assert info["provider"] == "CPUExecutionProvider"
    assert info["device"] == "cpu"
    assert info["input"] == {"name": "image", "shape": [-1, 8, 8, 1], "dtype": "uint8"}
    assert info["output"] == {"name": "probabilities", "classes": 3}
    assert info["intra_op_threads"] == physical_cores()
    assert info["graph_optimization"] == "all"
    assert info["io_binding"] is False
    assert runner.one_line().startswith("model.onnx: ran on CPUExecutionProvider")


def test_threads_graph_optimization_and_io_binding_are_overridable(linear_model):
    runner = Runner(
        linear_model, RunnerConfig(device="cpu", intra_op_threads=1, graph_optimization="disable", io_binding=True)
    )
    info = runner.describe()
    assert (info["intra_op_threads"], info["graph_optimization"], info["io_binding"]) == (1, "disable", True)
    batch = _random_batch(3)  # IOBinding on the CPU gives the same answer
    np.testing.assert_allclose(runner.run(batch), linear_reference(linear_model, batch), rtol=1e-5, atol=1e-6)


def _pretend_cuda(monkeypatch, works: bool, cpu_fails=False) -> list:
    """Pretend this onnxruntime has CUDA. A working one is a CPU session that reports the CUDA
    provider; a failing one raises at session creation like a broken cuDNN would (and so does
    the CPU with `cpu_fails`). Returns the list of (first provider, file name) of every session
    attempted."""
    import edgecnn.runtime as rt

    ort = import_onnxruntime()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = rt.Runner._create_session
    opened = []

    class ReportsCuda:
        def __init__(self, session):
            self._session = session

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._session, name)

    def create(self, ort_, providers):
        on_cuda = providers[0][0] == "CUDAExecutionProvider"
        opened.append((providers[0][0], self.path.name))
        if (on_cuda and not works) or cpu_fails:
            raise RuntimeError("CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR ; GPU=0")
        if on_cuda:
            return ReportsCuda(real(self, ort_, [("CPUExecutionProvider", {})]))
        return real(self, ort_, providers)

    monkeypatch.setattr(rt.Runner, "_create_session", create)
    return opened


def test_auto_runs_on_the_cpu_and_says_so_when_any_cuda_library_fails(linear_model, monkeypatch):
    _pretend_cuda(monkeypatch, works=False)
    runner = Runner(linear_model, RunnerConfig(device="auto"))
    assert runner.provider == "CPUExecutionProvider"
    assert "CUDA provider could not be created (CUDNN failure 4" in runner.device_note


def test_explicit_cuda_with_a_failing_cudnn_is_a_device_error_not_a_model_error(linear_model, monkeypatch):
    _pretend_cuda(monkeypatch, works=False)
    with pytest.raises(DeviceError, match="--device cuda: CUDA provider could not be created"):
        Runner(linear_model, RunnerConfig(device="cuda"))


def test_a_model_the_cpu_cannot_load_either_is_a_model_error(linear_model, monkeypatch):
    _pretend_cuda(monkeypatch, works=False, cpu_fails=True)
    with pytest.raises(ModelError, match="onnxruntime cannot load this model"):
        Runner(linear_model, RunnerConfig(device="cuda"))


def test_thread_spinning_can_be_turned_off_without_changing_answers(linear_model):
    runner = Runner(linear_model, RunnerConfig(device="cpu", allow_spinning=False))
    assert runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    batch = _random_batch(4)
    np.testing.assert_allclose(runner.run(batch), linear_reference(linear_model, batch), rtol=1e-5, atol=1e-6)


def test_predict_turns_spinning_off_because_decoding_shares_the_cores(linear_model, tmp_path, monkeypatch):
    from edgecnn import predict as predict_module

    seen = []
    real_runner = predict_module.Runner
    monkeypatch.setattr(
        predict_module, "Runner", lambda path, cfg, **kw: seen.append(cfg) or real_runner(path, cfg, **kw)
    )
    image = write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    predict_module.predict(predict_module.PredictConfig(model=linear_model, inputs=(image,)))
    assert seen[0].allow_spinning is False


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA; the auto note is about its absence")
def test_auto_says_why_it_ran_on_the_cpu(linear_model):
    runner = Runner(linear_model, RunnerConfig(device="auto"))
    assert runner.provider == "CPUExecutionProvider"
    assert runner.device_note == "this onnxruntime has no CUDA provider"
    assert "--device auto" in runner.one_line() and "no CUDA provider" in runner.one_line()


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available, so --device cuda does not fail")
def test_cuda_without_cuda_fails_clearly_naming_the_gpu_extra(linear_model):
    with pytest.raises(DeviceError) as info:
        Runner(linear_model, RunnerConfig(device="cuda"))
    message = str(info.value)
    assert message.startswith("--device cuda: this onnxruntime has no CUDA execution provider")
    assert 'pip install "edgecnn[gpu]"' in message
    assert "\n" not in message


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_runs_on_the_gpu_with_io_binding(linear_model):
    runner = Runner(linear_model, RunnerConfig(device="cuda:0", cudnn_conv_algo_search="HEURISTIC"))
    assert runner.provider == "CUDAExecutionProvider"
    assert runner.io_binding is True
    assert runner.describe()["cudnn_conv_algo_search"] == "HEURISTIC"
    batch = _random_batch(4)
    np.testing.assert_allclose(runner.run(batch), linear_reference(linear_model, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "config, message",
    [
        (RunnerConfig(device="tpu"), "device tpu: expected one of cpu, cuda, tensorrt, openvino or auto"),
        (RunnerConfig(device="cuda:x"), "--device cuda:x: expected cuda or cuda:N"),
    ],
)
def test_an_unknown_device_is_a_user_error(linear_model, config, message):
    with pytest.raises(EdgecnnError, match=message):
        Runner(linear_model, config)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"graph_optimization": "max"}, "graph_optimization max: expected one of disable, basic, extended, all"),
        ({"cudnn_conv_algo_search": "FAST"}, "cudnn_conv_algo_search FAST: expected one of EXHAUSTIVE, HEURISTIC"),
        (
            {"intra_op_threads": 0},
            r"intra_op_threads 0: expected a whole number from 1 to 1024 \(default: physical cores\)",
        ),
    ],
)
def test_bad_runner_settings_are_named_when_the_config_is_made(settings, message):
    with pytest.raises(SettingError, match=f"^{message}"):
        RunnerConfig(device="cpu", **settings)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--threads", "0"], "--threads 0: expected a whole number from 1 to 1024 (default: physical cores)"),
        (["--graph-optimization", "max"], "--graph-optimization max: expected one of disable, basic, extended, all"),
    ],
)
def test_on_the_command_line_a_bad_runner_setting_is_named_by_its_flag(linear_model, tmp_path, flags, message):
    from typer.testing import CliRunner

    from edgecnn.cli import app

    result = CliRunner().invoke(app, ["predict", str(linear_model), str(tmp_path), *flags])
    assert result.exit_code == 1 and result.output.strip() == f"error: {message}"


def test_missing_or_broken_model_files_are_user_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        Runner(tmp_path / "nope.onnx", CPU)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not onnx")
    with pytest.raises(ModelError, match="onnxruntime cannot load this model"):
        Runner(junk, CPU)


# -- foreign models ---------------------------------------------------------------------------
def test_foreign_model_without_settings_says_what_to_state(tmp_path):
    path = make_linear_onnx(tmp_path / "foreign.onnx", with_metadata=False)
    with pytest.raises(ModelError) as info:
        Runner(path, CPU)
    assert "has no edgecnn metadata" in str(info.value)
    assert "--image-size HxW" in str(info.value)


def test_foreign_model_runs_with_stated_settings_and_reads_the_rest_from_its_input(tmp_path):
    path = make_linear_onnx(tmp_path / "foreign.onnx", with_metadata=False)
    runner = Runner(path, CPU, foreign=ForeignModelSettings(image_size=(8, 8)))
    meta = runner.metadata
    assert runner.foreign is True
    assert (meta.channels, meta.layout, meta.input_dtype) == (1, "nhwc", "uint8")
    assert meta.class_names == ("0", "1", "2")  # one name per output score
    batch = _random_batch(2)
    np.testing.assert_allclose(runner.predict(list(batch)), linear_reference(path, batch), rtol=1e-5, atol=1e-6)


def test_foreign_settings_are_ignored_when_the_model_has_metadata(linear_model):
    runner = Runner(linear_model, CPU, foreign=ForeignModelSettings(image_size=(99, 99), class_names=("x",)))
    assert runner.metadata.image_size == (8, 8)
    assert runner.metadata.class_names == ("a", "b", "c")


def test_foreign_nchw_model_layout_is_guessed_from_its_input_shape(tmp_path):
    path = make_linear_onnx(tmp_path / "nchw.onnx", channels=3, layout="nchw", with_metadata=False)
    runner = Runner(path, CPU, foreign=ForeignModelSettings(image_size=(8, 8), class_names=("x", "y", "z")))
    assert (runner.metadata.layout, runner.metadata.channels) == ("nchw", 3)
    images = _random_batch(2, (8, 8, 3))
    expected = linear_reference(path, images.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(runner.predict(list(images)), expected, rtol=1e-5, atol=1e-6)


def test_foreign_float_model_gets_raw_pixels_as_floats(tmp_path):
    from onnx import TensorProto

    base = make_linear_onnx(tmp_path / "u8.onnx", with_metadata=False)
    path = _edit_input(base, tmp_path / "f32.onnx", elem_type=TensorProto.FLOAT)
    runner = Runner(path, CPU, foreign=ForeignModelSettings(image_size=(8, 8), input_dtype="float32"))
    images = _random_batch(3)
    batch = runner.prepare(list(images))
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, images.astype(np.float32))
    np.testing.assert_allclose(runner.run(batch), linear_reference(base, images), rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="--input-dtype uint8 was stated but the model's input is tensor\\(float\\)"):
        Runner(path, CPU, foreign=ForeignModelSettings(image_size=(8, 8), input_dtype="uint8"))


def test_foreign_settings_that_contradict_the_model_are_user_errors(tmp_path):
    path = make_linear_onnx(tmp_path / "foreign.onnx", with_metadata=False)
    with pytest.raises(ModelError, match="outputs 3 scores per image but 2 class names were given"):
        Runner(path, CPU, foreign=ForeignModelSettings(image_size=(8, 8), class_names=("x", "y")))
    with pytest.raises(ModelError, match="does not match the stated nhwc 16x16x1"):
        Runner(path, CPU, foreign=ForeignModelSettings(image_size=(16, 16)))


def test_parse_image_size_and_class_names(tmp_path):
    assert parse_image_size("224x160") == (224, 160)
    assert parse_image_size("96") == (96, 96)
    with pytest.raises(EdgecnnError, match="expected HEIGHTxWIDTH"):
        parse_image_size("big")
    assert parse_class_names("cat, dog,bird") == ("cat", "dog", "bird")
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n\n")
    assert parse_class_names(str(names)) == ("cat", "dog")
    with pytest.raises(EdgecnnError, match="expected names separated by commas"):
        parse_class_names(" , ")


# -- images -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "array",
    [
        np.full((20, 13), 100, np.uint8),  # gray, another size
        np.full((5, 31, 3), 100, np.uint8),  # RGB
        np.dstack(
            [np.full((8, 8, 3), 100, np.uint8), np.full((8, 8), 255, np.uint8)]
        ),  # RGBA, opaque (alpha: composited over white)
    ],
    ids=["gray-20x13", "rgb-5x31", "rgba-8x8"],
)
def test_images_of_any_size_and_mode_load_into_the_model_input(linear_model, tmp_path, array):
    runner = Runner(linear_model, CPU)
    path = write_image(tmp_path / "img.png", array)
    image = runner.load(path)
    assert image.shape == (8, 8, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, 100)
    expected = linear_reference(linear_model, np.full((1, 8, 8, 1), 100, np.uint8))
    np.testing.assert_allclose(runner.predict([image]), expected, rtol=1e-5, atol=1e-6)
    assert runner.load(path.read_bytes()).tolist() == image.tolist()  # bytes decode the same


@pytest.mark.skipif(HAS_CUDA, reason="simulates a CUDA provider that cannot run; this machine has a real one")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_cuda_provider_that_does_not_run_is_never_a_silent_cpu_fallback(linear_model, monkeypatch):
    ort = import_onnxruntime()
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    with pytest.raises(
        DeviceError, match="--device cuda: CUDA was requested but onnxruntime assigned CPUExecutionProvider"
    ):
        Runner(linear_model, RunnerConfig(device="cuda"))
    runner = Runner(linear_model, RunnerConfig(device="auto"))
    assert runner.provider == "CPUExecutionProvider"
    assert runner.device_note == "CUDA provider is installed but onnxruntime did not use it (no GPU visible?)"


# -- the FP16 variant on CUDA ---------------------------------------------------------------


@pytest.fixture
def export_folder(tmp_path, linear_model):
    """A model folder as `edgecnn export --quantize int8,fp16` leaves it (the files are copies)."""
    import shutil

    folder = tmp_path / "exported"
    folder.mkdir()
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx"):
        shutil.copy(linear_model, folder / name)
    return folder


def test_on_cuda_an_exports_model_onnx_runs_its_fp16_variant_and_says_so(export_folder, monkeypatch):
    opened = _pretend_cuda(monkeypatch, works=True)
    runner = Runner(export_folder / "model.onnx", RunnerConfig(device="auto"))

    assert opened == [("CUDAExecutionProvider", "model.fp16.onnx")]
    assert runner.on_cuda and runner.path.name == "model.fp16.onnx"
    assert runner.one_line().startswith("model.fp16.onnx: ran on CUDAExecutionProvider (GPU 0, --device auto)")
    assert "the FP16 variant of model.onnx (--no-fp16 runs model.onnx)" in runner.one_line()
    assert runner.describe()["variant_note"] == runner.variant_note


@pytest.mark.parametrize(
    "given, config, expected",
    [
        ("model.onnx", RunnerConfig(device="auto", prefer_fp16=False), "model.onnx"),  # --no-fp16
        ("model.int8.onnx", RunnerConfig(device="auto"), "model.int8.onnx"),  # only the FP32 file has an FP16 twin
        ("model.fp16.onnx", RunnerConfig(device="auto"), "model.fp16.onnx"),
    ],
)
def test_cuda_runs_the_file_given_when_asked_or_when_it_is_not_the_fp32_one(
    export_folder, monkeypatch, given, config, expected
):
    opened = _pretend_cuda(monkeypatch, works=True)
    runner = Runner(export_folder / given, config)

    assert opened == [("CUDAExecutionProvider", expected)]
    assert runner.variant_note == ""


def test_the_cpu_never_swaps_in_the_fp16_variant(export_folder, linear_model):
    runner = Runner(export_folder / "model.onnx", RunnerConfig(device="cpu"))
    assert runner.path.name == "model.onnx" and runner.variant_note == ""
    single = Runner(linear_model, RunnerConfig(device="cpu"))  # no FP16 file beside it at all
    assert single.path == Path(linear_model)


def test_when_cuda_fails_auto_runs_the_fp32_file_on_the_cpu(export_folder, monkeypatch):
    opened = _pretend_cuda(monkeypatch, works=False)
    runner = Runner(export_folder / "model.onnx", RunnerConfig(device="auto"))

    assert opened == [("CUDAExecutionProvider", "model.fp16.onnx"), ("CPUExecutionProvider", "model.onnx")]
    assert runner.provider == "CPUExecutionProvider" and runner.path.name == "model.onnx"
    assert runner.variant_note == "" and "CUDA provider could not be created" in runner.device_note


def test_profile_measures_exactly_the_files_it_is_given_even_on_cuda(export_folder, monkeypatch):
    from edgecnn.profile import ProfileConfig, profile_models

    opened = _pretend_cuda(monkeypatch, works=True)
    report = profile_models(
        [export_folder / "model.onnx"],
        ProfileConfig(batch_sizes=(1,), iterations=3, warmup=1, runner=RunnerConfig(device="auto", io_binding=False)),
    )

    assert {name for _, name in opened} == {"model.onnx"}
    assert report.models[0].provider == "CUDAExecutionProvider"


def test_predict_no_fp16_option_runs_the_file_given(export_folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgecnn.cli import app

    image = write_image(tmp_path / "one.png", np.full((8, 8), 128, np.uint8))
    opened = _pretend_cuda(monkeypatch, works=True)
    for flag, expected in (("--fp16", "model.fp16.onnx"), ("--no-fp16", "model.onnx")):
        opened.clear()
        result = CliRunner().invoke(
            app, ["predict", str(export_folder / "model.onnx"), str(image), flag, "--no-io-binding"]
        )
        assert result.exit_code == 0, result.output
        assert opened == [("CUDAExecutionProvider", expected)]
