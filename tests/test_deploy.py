"""`edgecnn deploy`: a KServe InferenceService the kserve SDK's own model classes accept, and Triton repositories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import linear_reference, make_linear_onnx
from edgecnn.cli import app
from edgecnn.deploy import KServeConfig, choose_model, deploy_kserve, inference_service, to_yaml
from edgecnn.errors import EdgecnnError
from edgecnn.triton import deploy_triton
from edgecnn.verify import write_verification_set

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def exported(tmp_path) -> Path:
    """An exported-looking model folder `digits/`: model.onnx and model.int8.onnx, int8 recommended."""
    folder = tmp_path / "digits"
    make_linear_onnx(folder / "model.onnx", seed=0)
    make_linear_onnx(folder / "model.int8.onnx", seed=1)
    report = {"variants": [{"variant": "fp32", "recommended": False}, {"variant": "int8", "recommended": True}]}
    (folder / "export_report.json").write_text(json.dumps(report))
    return folder


# Run in a fresh interpreter: the kserve SDK registers its own gRPC protos under the same names as
# tritonclient's ("inference.ServerLiveRequest"), so the two cannot be imported into one process.
SDK_CHECK = r"""
import json, sys
import kserve, kubernetes.client, yaml


def load(data, type_name):
    # Build the SDK's model objects from plain data, refusing any field the classes do not declare.
    # kserve's V1beta1* classes hold Kubernetes' V1* classes (V1Container, V1Probe, ...): names are
    # looked up in kserve.models, then kubernetes.client.models; their setters check required fields.
    if type_name.lower().startswith("list["):  # kserve writes list[X], kubernetes List[X]
        assert isinstance(data, list), (type_name, data)
        return [load(v, type_name[5:-1]) for v in data]
    if type_name.lower().startswith(("dict(", "dict[")):  # dict(str, X) or Dict[str, X]
        assert isinstance(data, dict), (type_name, data)
        inner = type_name[type_name.index(",") + 1:-1].strip()
        return {k: load(v, inner) for k, v in data.items()}
    natives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in natives:
        assert isinstance(data, natives[type_name]), (type_name, data)
        return data
    cls = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = set(data) - set(fields)
    assert not unknown, f"{type_name} has no field(s) {sorted(unknown)}"
    return cls(**{fields[k]: load(v, cls.openapi_types[fields[k]]) for k, v in data.items()})


data = yaml.safe_load(open(sys.argv[1]).read())
isvc = load(data, "V1beta1InferenceService")
assert isinstance(isvc, kserve.V1beta1InferenceService)
assert kserve.ApiClient().sanitize_for_serialization(isvc) == data  # nothing lost or reinterpreted
(c,) = isvc.spec.predictor.containers
print(json.dumps({
    "kind": [isvc.api_version, isvc.kind, isvc.metadata.name], "image": c.image,
    "ports": [[p.container_port, p.protocol] for p in c.ports],
    "ready": [c.readiness_probe.http_get.path, c.readiness_probe.http_get.port],
    "live": [c.liveness_probe.http_get.path, c.liveness_probe.http_get.port],
    "requests": c.resources.requests, "limits": c.resources.limits, "non_root": c.security_context.run_as_non_root,
}))
"""


def test_the_manifest_loads_with_the_kserve_sdk_model_classes_and_round_trips(exported, tmp_path):
    files = deploy_kserve(
        KServeConfig(model_dir=exported, image="registry.example.com/team/digits:1", out=tmp_path / "ks")
    )
    done = subprocess.run(
        [sys.executable, "-c", SDK_CHECK, str(files.manifest)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["kind"] == ["serving.kserve.io/v1beta1", "InferenceService", "digits"]
    assert seen["image"] == "registry.example.com/team/digits:1"
    assert seen["ports"] == [[8080, "TCP"]]
    assert seen["ready"] == ["/v2/health/ready", 8080] and seen["live"] == ["/v2/health/live", 8080]
    assert seen["requests"] == {"cpu": "1", "memory": "1Gi"} and seen["limits"] == {"cpu": "2", "memory": "1Gi"}
    assert seen["non_root"] is True


def test_the_dockerfile_runs_the_command_the_readme_documents_as_a_non_root_user(exported, tmp_path):
    files = deploy_kserve(KServeConfig(model_dir=exported, image="example/digits:1", out=tmp_path / "ks"))
    lines = files.dockerfile.read_text().splitlines()
    cmd = next(line for line in lines if line.startswith("CMD "))
    assert json.loads(cmd[4:]) == [
        "edgecnn",
        "serve",
        "/models/digits/model.int8.onnx",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--name",
        "digits",
        "--device",
        "cpu",
        "--threads",
        "2",  # the container's CPU limit (twice the request of 1): more threads would queue for the quota
    ]
    assert cmd in (ROOT / "README.md").read_text()
    assert lines[next(i for i, line in enumerate(lines) if line.startswith("FROM"))] == "FROM python:3.11-slim"
    assert 'ARG EDGECNN="edgecnn[cpu,uvloop]==' in "\n".join(lines)
    user = next(line for line in lines if line.startswith("USER "))
    assert user != "USER root" and user.split()[1].isdigit() and int(user.split()[1]) > 0
    assert (tmp_path / "ks" / "model" / "model.int8.onnx").read_bytes() == (exported / "model.int8.onnx").read_bytes()


def test_the_container_gets_the_verification_set_so_serve_checks_the_model_before_it_answers(exported, tmp_path):
    images = np.random.default_rng(3).integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
    answers = linear_reference(exported / "model.int8.onnx", images)
    write_verification_set(exported, images, answers.argmax(1), answers, ("a", "b", "c"), 1.0, 20)
    files = deploy_kserve(KServeConfig(model_dir=exported, image="example/digits:1", out=tmp_path / "ks"))
    assert sorted(p.name for p in (tmp_path / "ks" / "model").iterdir()) == ["model.int8.onnx", "verification.npz"]
    res = CliRunner().invoke(app, ["verify", str(files.model)])  # what `edgecnn serve FILE` runs at start-up
    assert res.exit_code == 0 and "PASS" in res.output, res.output


@pytest.mark.parametrize("cpu, threads", [("1", "2"), ("500m", "1"), ("1500m", "3"), ("250m", "1"), ("3", "6")])
def test_the_server_gets_as_many_threads_as_the_cpu_limit_allows(exported, tmp_path, cpu, threads):
    files = deploy_kserve(KServeConfig(model_dir=exported, image="example/digits:1", out=tmp_path / "ks", cpu=cpu))
    assert files.command[-2:] == ("--threads", threads)


def test_gpu_installs_the_gpu_extra_runs_on_cuda_and_requests_a_gpu(exported, tmp_path):
    import yaml

    files = deploy_kserve(
        KServeConfig(
            model_dir=exported,
            image="example/digits:1",
            out=tmp_path / "ks",
            gpu=True,
            variant="fp32",
            name="digits-gpu",
        )
    )
    text = files.dockerfile.read_text()
    assert (
        'ARG EDGECNN="edgecnn[gpu,uvloop]==' in text
        and '"--device", "cuda"' in text
        and "/models/digits-gpu/model.onnx" in text
    )
    limits = yaml.safe_load(files.manifest.read_text())["spec"]["predictor"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_the_probes_wait_while_serve_loads_and_verifies_the_model_before_it_listens(exported):
    (container,) = inference_service(KServeConfig(model_dir=exported, image="a/b:1"), "digits")["spec"]["predictor"][
        "containers"
    ]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # liveness starts only after it succeeds


def test_the_hand_written_yaml_is_the_manifest(exported):
    import yaml

    manifest = inference_service(KServeConfig(model_dir=exported, image="a/b:1", cpu="500m"), "digits")
    assert yaml.safe_load(to_yaml(manifest)) == manifest
    assert manifest["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] == "1000m"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cpu", "-2"], "--cpu -2: expected a Kubernetes CPU quantity above 0"),
        (["--cpu", "0m"], "--cpu 0m: expected a Kubernetes CPU quantity above 0"),
        (["--memory", "lots"], "--memory lots: expected a Kubernetes memory quantity above 0"),
        (["--memory", "0Gi"], "--memory 0Gi: expected a Kubernetes memory quantity above 0"),
        (["--memory", "1K"], "--memory 1K: expected a Kubernetes memory quantity above 0"),  # k or Ki, never K
    ],
)
def test_resources_kubernetes_would_refuse_are_one_line_errors_before_anything_is_written(
    exported, tmp_path, flags, message
):
    res = CliRunner().invoke(
        app, ["deploy", "kserve", str(exported), "--image", "a/b:1", "--out", str(tmp_path / "ks"), *flags]
    )
    assert res.exit_code == 1 and res.stderr.startswith(f"error: {message}, such as ") and res.stderr.count("\n") == 1
    assert not (tmp_path / "ks").exists()


@pytest.mark.parametrize("cpu, memory", [("1e3", "1e9"), (".5", "512Mi"), ("1.5", "1.5Gi"), ("250m", "100M")])
def test_every_way_kubernetes_writes_a_quantity_is_taken(exported, tmp_path, cpu, memory):
    files = deploy_kserve(KServeConfig(model_dir=exported, image="a/b:1", out=tmp_path / "ks", cpu=cpu, memory=memory))
    limits = inference_service(KServeConfig(model_dir=exported, image="a/b:1", cpu=cpu, memory=memory), "digits")
    assert (
        files.manifest.is_file()
        and limits["spec"]["predictor"]["containers"][0]["resources"]["limits"]["memory"] == memory
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"name": "Digits_Model"}, "a KServe name must be lower-case"),
        ({"image": ""}, "expected an image reference"),
        ({"variant": "int4"}, "--variant int4: expected one of fp32, int8, fp16"),
        ({"variant": "fp16"}, "model.fp16.onnx: no such file; export the model first"),
    ],
)
def test_bad_deploy_settings_are_one_line_errors(exported, tmp_path, settings, message):
    config = KServeConfig(**{"model_dir": exported, "image": "a/b:1", "out": tmp_path / "ks", **settings})
    with pytest.raises(EdgecnnError, match=message):
        deploy_kserve(config)
    assert not (tmp_path / "ks").exists()


def test_kserve_refuses_to_replace_a_folder_it_did_not_write(exported, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(EdgecnnError, match="is not an earlier `edgecnn deploy kserve` folder"):
        deploy_kserve(KServeConfig(model_dir=exported, image="a/b:1", out=tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_deploy_triton_writes_a_model_config_triton_parses_for_the_recommended_variant(exported, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    folder = deploy_triton(exported, tmp_path / "repo")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("digits", "onnxruntime_onnx", 32)
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), out.name, list(out.dims)) == ("image", [8, 8, 1], "probabilities", [3])
    assert (folder / "labels.txt").read_text().splitlines() == ["a", "b", "c"]
    assert (folder / "1" / "model.onnx").read_bytes() == (exported / "model.int8.onnx").read_bytes()


def test_deploy_triton_again_replaces_version_1_in_one_step_and_keeps_the_other_versions(exported, tmp_path):
    deploy_triton(exported, tmp_path / "repo", variant="fp32")
    (tmp_path / "repo" / "digits" / "2").mkdir()
    (tmp_path / "repo" / "digits" / "2" / "model.onnx").write_bytes(b"the user's own version 2")
    folder = deploy_triton(exported, tmp_path / "repo", variant="int8")
    assert (folder / "1" / "model.onnx").read_bytes() == (exported / "model.int8.onnx").read_bytes()
    assert (folder / "2" / "model.onnx").read_bytes() == b"the user's own version 2"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["digits"]  # no scratch folder left


def test_deploy_triton_that_cannot_finish_leaves_the_repository_as_it_was(exported, tmp_path, monkeypatch):
    import edgecnn.triton

    folder = deploy_triton(exported, tmp_path / "repo", variant="fp32")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(edgecnn.triton.shutil, "copyfile", disk_full)  # after config.pbtxt and labels.txt
    with pytest.raises(EdgecnnError, match=r"cannot write the Triton repository .*digits: No space left on device"):
        deploy_triton(exported, tmp_path / "repo", variant="int8")
    with pytest.raises(EdgecnnError, match="No space left on device"):
        deploy_triton(exported, tmp_path / "new-repo", variant="int8")
    assert not (tmp_path / "new-repo" / "digits").exists()
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["digits"]
    with pytest.raises(EdgecnnError, match=r"cannot write a Triton repository into .*: it is a file; give a folder"):
        deploy_triton(exported, folder / "config.pbtxt", variant="fp32")


@pytest.mark.parametrize("name", ["..", ".", "../../escaped", "a/b", ".hidden", "a\nb"])
def test_deploy_triton_takes_a_model_name_never_a_path(exported, tmp_path, name):
    (tmp_path / "repo" / "earlier").mkdir(parents=True)
    with pytest.raises(EdgecnnError, match="a Triton model name is one folder name, not a path or hidden; pass --name"):
        deploy_triton(exported, tmp_path / "repo", name=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "repo"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["earlier"]


def test_deploy_triton_max_batch_size_is_0_or_more(exported, tmp_path):
    res = CliRunner().invoke(app, ["deploy", "triton", str(exported), "--out", str(tmp_path), "--max-batch-size", "-1"])
    assert res.exit_code == 1 and "--max-batch-size -1: expected 0 or more" in res.stderr, res.output


def test_choose_model_falls_back_to_model_onnx_without_an_export_report(exported):
    (exported / "export_report.json").unlink()
    assert choose_model(exported).path == exported / "model.onnx"


def test_the_deploy_commands_write_their_files_and_say_what_next(exported, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app, ["deploy", "kserve", str(exported), "--image", "a/digits:1", "--out", str(tmp_path / "ks")]
    )
    assert res.exit_code == 0, res.output
    assert "kubectl apply -f" in res.output and (tmp_path / "ks" / "inferenceservice.yaml").is_file()
    res = runner.invoke(app, ["deploy", "triton", str(exported), "--out", str(tmp_path / "repo"), "--variant", "fp32"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "repo" / "digits" / "1" / "model.onnx").read_bytes() == (exported / "model.onnx").read_bytes()
    res = runner.invoke(app, ["deploy", "kserve", str(tmp_path / "nowhere"), "--image", "a/b:1"])
    assert res.exit_code == 1 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_every_option_of_the_deploy_commands_has_help_text():
    group = typer.main.get_command(app).commands["deploy"]
    assert group.help
    for name in ("kserve", "triton"):
        command = group.commands[name]
        assert command.help, f"deploy {name} has no description"
        for param in command.params:
            if param.param_type_name == "option":
                assert getattr(param, "help", None), f"deploy {name} {param.opts} has no help text"
