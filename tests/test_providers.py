"""The execution-provider registry: one entry per provider, missing ones named with their extra."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgecnn.errors import DeviceError, EdgecnnError, SettingError
from edgecnn.ort import import_onnxruntime, installed_onnxruntime_distributions
from edgecnn.providers import PROVIDERS, OpenVINO, devices_help, parse_device, parse_ep_options, unusable, usable
from edgecnn.runtime import Runner, RunnerConfig
from conftest import linear_reference

ORT = import_onnxruntime()
OPENVINO_UNUSABLE = PROVIDERS["openvino"].unusable(ORT)  # None where it runs; else the true reason
needs_openvino = pytest.mark.skipif(OPENVINO_UNUSABLE is not None, reason=f"OpenVINO provider: {OPENVINO_UNUSABLE}")


def test_the_registry_knows_cpu_cuda_tensorrt_and_openvino_and_the_extra_of_each():
    assert {k: p.extra for k, p in PROVIDERS.items()} == {
        "cpu": "cpu",
        "cuda": "gpu",
        "tensorrt": "gpu",
        "openvino": "openvino",
    }
    assert all(p.ort_name.endswith("ExecutionProvider") for p in PROVIDERS.values())
    assert "openvino:CPU|GPU|NPU" in devices_help() and "cuda:N" in devices_help()
    assert usable(ORT)[0] == (PROVIDERS["cpu"], "")


@pytest.mark.parametrize(
    "text, key, device",
    [
        ("cpu", "cpu", ""),
        ("cuda:1", "cuda", "1"),
        ("openvino:GPU", "openvino", "GPU"),
        ("tensorrt", "tensorrt", ""),
        ("OpenVINO", "openvino", ""),
    ],
)
def test_device_specs_name_a_provider_and_one_of_its_devices(text, key, device):
    target = parse_device(text)
    assert (target.provider.key, target.device) == (key, device)
    assert parse_device("auto") is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("cpu:0", "the CPU provider takes no device number"),
        ("openvino:TPU", "expected openvino, openvino:CPU"),
        ("cuda:x", "expected cuda or cuda:N"),
    ],
)
def test_malformed_device_specs_are_one_line_errors(text, message):
    with pytest.raises(DeviceError, match=message):
        parse_device(text)


def test_an_unknown_device_is_a_setting_error_listing_every_provider_and_auto():
    with pytest.raises(SettingError) as caught:
        parse_device("npu:1")
    assert str(caught.value) == (
        "device npu:1: expected one of cpu, cuda, tensorrt, openvino or auto (NAME:DEVICE picks a device: cuda:1, "
        "openvino:GPU)"
    )


def test_ep_options_are_key_value_pairs_checked_by_their_provider(linear_model):
    assert parse_ep_options(["precision=bf16", "hint = THROUGHPUT"]) == (("precision", "bf16"), ("hint", "THROUGHPUT"))
    with pytest.raises(EdgecnnError, match="expected KEY=VALUE"):
        parse_ep_options(["precision"])
    with pytest.raises(EdgecnnError, match="cpu has no such setting"):
        Runner(linear_model, RunnerConfig(device="cpu", ep_options=(("precision", "bf16"),)))
    with pytest.raises(EdgecnnError, match="precision=fp8: expected one of f32, bf16, f16, device"):
        OpenVINO().check_settings({"precision": "fp8"})


def test_openvino_without_its_extra_names_the_extra_in_one_line(linear_model, monkeypatch):
    monkeypatch.setattr(OpenVINO, "_plugin", lambda self: None)
    with pytest.raises(DeviceError) as info:
        Runner(linear_model, RunnerConfig(device="openvino"))
    message = str(info.value)
    assert message == (
        "--device openvino: the OpenVINO execution provider is not installed; "
        'install it beside onnxruntime: pip install "edgecnn[openvino]"'
    )


def test_openvino_installed_but_seeing_no_device_says_so_rather_than_not_installed(linear_model, monkeypatch):
    from edgecnn.machine import cpuinfo

    monkeypatch.setattr(OpenVINO, "_plugin", lambda self: object())  # the plugin package is there...
    monkeypatch.setattr(OpenVINO, "_ep_devices", lambda self, ort: [])  # ...and lists no device (an AMD CPU)
    reason = OpenVINO().unusable(ORT)
    assert reason.startswith("installed (") and reason.endswith(
        f"but the plugin lists no device on this CPU ({cpuinfo()[0]})"
    )
    with pytest.raises(DeviceError) as info:
        Runner(linear_model, RunnerConfig(device="openvino"))
    assert str(info.value) == f"--device openvino: the OpenVINO execution provider is {reason}"
    assert [(p.key, why) for p, why in unusable(ORT) if p.key == "openvino"] == [("openvino", reason)]


def test_openvino_settings_go_into_its_load_config_because_the_plugin_ignores_the_classic_ones():
    target = parse_device("openvino")
    options = OpenVINO().provider_options(
        target, {"precision": "device", "hint": "THROUGHPUT", "streams": "2"}, RunnerConfig(intra_op_threads=3)
    )
    assert json.loads(options["load_config"]) == {
        "CPU": {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2", "INFERENCE_NUM_THREADS": "3"}
    }
    exact = OpenVINO().provider_options(target, {}, RunnerConfig(intra_op_threads=2))
    assert json.loads(exact["load_config"])["CPU"]["INFERENCE_PRECISION_HINT"] == "f32"  # never bf16 unless asked


@pytest.mark.skipif(
    not PROVIDERS["openvino"].present(ORT), reason="the openvino extra (onnxruntime-ep-openvino) is not installed"
)
def test_the_openvino_plugin_installs_beside_onnxruntime_without_replacing_it(linear_model):
    assert installed_onnxruntime_distributions() == ["onnxruntime"]
    code = "import onnxruntime, onnxruntime_ep_openvino; print(onnxruntime.__version__, onnxruntime.get_available_providers())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith(ORT.__version__) and "CPUExecutionProvider" in out


@needs_openvino
def test_openvino_runs_the_model_and_reports_itself(linear_model):
    runner = Runner(linear_model, RunnerConfig(device="openvino"))
    assert runner.provider == "OpenVINOExecutionProvider"
    assert "OpenVINO CPU, precision f32, latency" in runner.one_line()
    batch = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    np.testing.assert_allclose(runner.run(batch), linear_reference(linear_model, batch), rtol=1e-4, atol=1e-5)
    with pytest.raises(DeviceError, match="OpenVINO sees no NPU here"):
        Runner(linear_model, RunnerConfig(device="openvino:NPU"))
