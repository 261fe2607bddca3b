"""`edgecnn serve` on a device where models change (issue 24): several models in one server, the
start-up check, verified updates with --watch under load, refused updates, Triton's repository
extension with tritonclient, a folder deleted while serving, SIGTERM during a reload.

Every server is a real `edgecnn serve` process on 127.0.0.1; every model a real ONNX file with a
real verification set (`edgecnn.verify.write_verification_set`); updates are published the way
`edgecnn export` does it (the folder swapped in one rename, `edgecnn.files.swap_paths`).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from typer.testing import CliRunner
from tritonclient.utils import InferenceServerException

from conftest import linear_reference, make_linear_onnx
from edgecnn.cli import app as cli_app
from edgecnn.files import swap_paths
from edgecnn.launch import free_port
from edgecnn.serve.config import ServeConfig
from edgecnn.verify import write_verification_set
from test_serve import ServerProcess, metric

INTERVAL = 0.2  # --watch-interval of these tests
WAIT = 60.0  # the most seconds a test waits for the server to notice something (never reached when it works)
ROW = np.random.default_rng(7).integers(0, 256, size=(1, 8, 8, 1), dtype=np.uint8)


def make_export(folder: Path, seed: int, truth_seed: int | None = None, classes=("a", "b", "c")) -> Path:
    """An export-like folder: model.onnx (a linear classifier of `seed`) and a verification set whose
    labels and Keras answers are those of `truth_seed`'s model (default: the same, so it passes)."""
    model = make_linear_onnx(folder / "model.onnx", seed=seed, classes=classes)
    truth = model
    if truth_seed is not None and truth_seed != seed:
        truth = make_linear_onnx(
            folder.parent / f".truth-{folder.name}" / "model.onnx", seed=truth_seed, classes=classes
        )
    images = np.random.default_rng(100).integers(0, 256, size=(60, 8, 8, 1), dtype=np.uint8)
    probabilities = linear_reference(truth, images)
    write_verification_set(folder, images, probabilities.argmax(1), probabilities, classes, 1.0, 60)
    if truth is not model:
        shutil.rmtree(truth.parent)
    return folder


def publish(source: Path, target: Path) -> None:
    """Put `source`'s files in place of `target` as `edgecnn export` does: one atomic folder swap."""
    staging = target.parent / f".{target.name}.staging"
    shutil.copytree(source, staging)
    swap_paths(staging, target)
    shutil.rmtree(staging)


def infer(base: str, name: str, client: httpx.Client | None = None) -> httpx.Response:
    body = {"inputs": [{"name": "image", "shape": list(ROW.shape), "datatype": "UINT8", "data": ROW.ravel().tolist()}]}
    return (client or httpx).post(f"{base}/v2/models/{name}/infer", json=body, timeout=30)


def answer(reply: httpx.Response) -> np.ndarray:
    return np.reshape(reply.json()["outputs"][0]["data"], (1, -1))


def index(base: str) -> list[dict]:
    reply = httpx.post(base + "/v2/repository/index", timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait_for(what: str, check, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout:g} s for {what}")


@pytest.fixture
def versions(tmp_path) -> dict[str, Path]:
    """Exports kept aside to publish: v1 and v2 (both pass their checks), broken (fails its check)."""
    built = tmp_path / "built"
    return {
        "v1": make_export(built / "v1", seed=0),
        "v2": make_export(built / "v2", seed=1),
        "broken": make_export(built / "broken", seed=5, truth_seed=0),
    }


def reference(folder: Path) -> np.ndarray:
    return linear_reference(folder / "model.onnx", ROW)


# -- the start-up check ------------------------------------------------------------------------
def test_serve_refuses_to_start_with_one_line_when_the_verification_set_fails(versions, tmp_path):
    broken = shutil.copytree(versions["broken"], tmp_path / "tiny")
    result = CliRunner().invoke(cli_app, ["serve", str(broken), "--port", str(free_port())])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "failed verification: FAIL model.onnx" in lines[0], result.output
    assert "Traceback" not in result.output


def test_a_checked_model_starts_and_no_verify_or_no_set_start_with_one_line_each(versions, tmp_path):
    good = shutil.copytree(versions["v1"], tmp_path / "good" / "tiny")
    proc = ServerProcess(good, tmp_path)
    try:
        assert proc.stop() == 0
        said = proc.stderr_path.read_text()
        assert "checked tiny: PASS model.onnx" in said and "60 images" in said, said
    finally:
        proc.stop()
    broken = shutil.copytree(versions["broken"], tmp_path / "skip" / "tiny")
    proc = ServerProcess(broken, tmp_path, "--no-verify")
    assert infer(proc.base, "tiny").status_code == 200
    assert proc.stop() == 0 and "checked" not in proc.stderr_path.read_text()
    bare = make_linear_onnx(tmp_path / "bare" / "tiny" / "model.onnx")
    proc = ServerProcess(bare, tmp_path)
    assert proc.stop() == 0
    warnings = [line for line in proc.stderr_path.read_text().splitlines() if "no verification set" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "serving tiny unchecked" in warnings[0]


# -- several models ------------------------------------------------------------------------------
def test_a_folder_of_exports_serves_each_with_its_own_metrics_and_index_entry(versions, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(versions["v1"], root / "first")
    shutil.copytree(versions["v2"], root / "second")
    (root / "notes").mkdir()  # a folder without a model is not a model
    proc = ServerProcess(root, tmp_path)
    try:
        first, second = infer(proc.base, "first"), infer(proc.base, "second")
        assert first.status_code == second.status_code == 200
        np.testing.assert_allclose(answer(first), reference(versions["v1"]), atol=1e-6)
        np.testing.assert_allclose(answer(second), reference(versions["v2"]), atol=1e-6)
        assert first.json()["model_version"] == second.json()["model_version"] == "1"
        assert httpx.get(proc.base + "/v2/models/second").json()["versions"] == ["1"]
        assert infer(proc.base, "notes").status_code == 404
        assert index(proc.base) == [
            {"name": "first", "version": "1", "state": "READY", "reason": ""},
            {"name": "second", "version": "1", "state": "READY", "reason": ""},
        ]
        text = httpx.get(proc.base + "/metrics").text
        assert metric(text, "nv_inference_request_success", model="first") == 1
        assert metric(text, "nv_inference_request_success", model="second") == 1
        assert metric(text, "edgecnn_model_version", model="second") == 1
        assert "serving 2 models (first, second)" in proc.stdout_path.read_text()
    finally:
        assert proc.stop() == 0, proc.stderr_path.read_text()


def test_an_export_folder_whose_name_cannot_be_a_model_name_is_said_once_not_skipped_silently(versions, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(versions["v1"], root / "good")
    shutil.copytree(versions["v2"], root / "my model")
    shutil.copytree(versions["v2"], root / ".good.staging")  # an export's staging folder: not a model, not said
    (root / "trained").mkdir()
    (root / "trained" / "metadata.json").write_text("{}")  # trained, not exported yet
    proc = ServerProcess(root, tmp_path, "--watch", "--watch-interval", str(INTERVAL))
    try:
        assert [entry["name"] for entry in index(proc.base)] == ["good"]
        shutil.copytree(versions["v2"], root / "später")
        wait_for("the line on the new folder", lambda: "später" in proc.stderr_path.read_text())
        time.sleep(3 * INTERVAL)  # a few more polls: still said once
    finally:
        assert proc.stop() == 0, proc.stderr_path.read_text()
    said = [line for line in proc.stderr_path.read_text().splitlines() if "cannot be a model name" in line]
    assert len(said) == 2 and "'my model'" in said[0] and "'später'" in said[1], said
    unexported = [line for line in proc.stderr_path.read_text().splitlines() if "no exported .onnx" in line]
    assert unexported == [
        f"warning: {root / 'trained'}: not served, a trained model with no exported .onnx; "
        f"run edgecnn export {root / 'trained'}"
    ], unexported
    assert all(line.startswith("warning: ") and line.endswith("rename the folder") for line in said)
    assert "staging" not in proc.stderr_path.read_text()
    shutil.rmtree(root / "good")
    result = CliRunner().invoke(cli_app, ["serve", str(root), "--port", str(free_port())])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "'my model'" in lines[0] and lines[0].endswith("rename them")


def _write_verification_bomb(path: Path, rows: int) -> None:
    """A verification.npz of `rows` all-zero 8x8 images (with labels and probabilities to match): a
    few hundred KiB on disk declaring hundreds of MiB in memory. Written in chunks: the test never holds it."""
    from numpy.lib import format as npy

    info = path.parent / "info.npy"
    np.save(info, np.array(json.dumps({"format": 1, "class_names": ["a", "b", "c"], "max_accuracy_drop": 1.0})))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(info, "info.npy")
        for name, row_shape, dtype in (
            ("images", (8, 8, 1), np.uint8),
            ("labels", (), np.int32),
            ("probabilities", (3,), np.float32),
        ):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as fh:
                header = {
                    "descr": npy.dtype_to_descr(np.dtype(dtype)),
                    "fortran_order": False,
                    "shape": (rows, *row_shape),
                }
                npy.write_array_header_1_0(fh, header)
                left, chunk = rows * int(np.prod(row_shape)) * np.dtype(dtype).itemsize, bytes(1 << 20)
                while left > 0:
                    fh.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
    info.unlink()


def test_an_update_whose_verification_set_declares_hundreds_of_mib_is_refused_before_it_is_read(versions, tmp_path):
    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    bomb = shutil.copytree(versions["v2"], tmp_path / "built" / "bomb")
    _write_verification_bomb(bomb / "verification.npz", rows=4 * 1024 * 1024)  # 256 MiB of images
    assert (bomb / "verification.npz").stat().st_size < 4 * 1024 * 1024
    proc = ServerProcess(served, tmp_path, "--watch", "--watch-interval", str(INTERVAL))
    try:
        publish(bomb, served)
        refused = wait_for("the refusal", lambda: [e for e in index(proc.base) if e["state"] == "UNAVAILABLE"])
        assert refused[0]["version"] == "2" and "more than an export writes" in refused[0]["reason"], refused
        reply = infer(proc.base, "tiny")
        assert reply.status_code == 200 and reply.json()["model_version"] == "1"
    finally:
        assert proc.stop() == 0, proc.stderr_path.read_text()


# -- verified updates under load -----------------------------------------------------------------
def test_a_reload_under_16_clients_answers_every_request_with_exactly_one_version(versions, tmp_path):
    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    proc = ServerProcess(served, tmp_path, "--watch", "--watch-interval", str(INTERVAL), "--max-queue", "1024")
    expected = {"1": reference(versions["v1"]), "2": reference(versions["v2"])}
    stop, results, errors = threading.Event(), [], []

    def client():
        seen = []
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                reply = infer(proc.base, "tiny", http)
                if reply.status_code != 200:
                    errors.append((reply.status_code, reply.text))
                    continue
                version = reply.json()["model_version"]
                if version not in expected or not np.allclose(answer(reply), expected[version], atol=1e-6):
                    errors.append((version, reply.text))
                seen.append((time.monotonic(), version))
        results.append(seen)

    threads = [threading.Thread(target=client) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        wait_for("answers from 16 clients", lambda: _answers(proc) >= 64)
        published = time.monotonic()
        publish(versions["v2"], served)
        wait_for("version 2", lambda: infer(proc.base, "tiny").json()["model_version"] == "2")
        time.sleep(5 * INTERVAL)  # more answers from version 2 only
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        code = proc.stop()
    assert code == 0 and not errors, errors[:3]
    assert len(results) == 16 and all(seen for seen in results)
    for seen in results:  # one client's answers never go back from 2 to 1
        versions_seen = [v for _, v in seen]
        assert versions_seen == sorted(versions_seen) and versions_seen[-1] == "2"
    first_v2 = min(t for seen in results for t, v in seen if v == "2")
    said = proc.stderr_path.read_text()
    line = next(line for line in said.splitlines() if line.startswith("serving tiny version 2"))
    load_seconds = float(line.split("loaded and checked in ")[1].split(" s")[0])
    # the switch comes within one poll interval plus the load, with room for a busy shared machine
    assert first_v2 - published <= INTERVAL + load_seconds + 5.0, (first_v2 - published, load_seconds)
    assert "PASS model.onnx" in line


def _content_length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_request_still_being_read_when_its_version_is_retired_answers_503_not_500(versions, tmp_path):
    """The old version waits --shutdown-timeout for its requests; one whose body arrives later is told
    to send again (503), never a 500 from a freed session."""
    import socket

    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    proc = ServerProcess(served, tmp_path, "--watch", "--watch-interval", str(INTERVAL), "--shutdown-timeout", "0.2")
    body = json.dumps(
        {"inputs": [{"name": "image", "shape": list(ROW.shape), "datatype": "UINT8", "data": ROW.ravel().tolist()}]}
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
            head = (
                f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1:{proc.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
            )
            sock.sendall(head.encode())
            # 100 Continue comes when the handler starts reading the body: it holds version 1 by then
            assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body[:10])
            publish(versions["v2"], served)
            wait_for("version 2", lambda: infer(proc.base, "tiny").json()["model_version"] == "2")
            time.sleep(2.0)  # ten times version 1's --shutdown-timeout: it is retired by then
            sock.sendall(body[10:])
            reply = b""
            while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _content_length(reply):
                chunk = sock.recv(65536)
                if not chunk:  # closed: what came is the answer
                    break
                reply += chunk
            reply = reply.decode()
        status = int(reply.split(" ", 2)[1])
        assert status == 503 and "send the request again" in reply, reply
        assert infer(proc.base, "tiny").status_code == 200
    finally:
        assert proc.stop() == 0, proc.stderr_path.read_text()


def _answers(proc) -> int:
    text = httpx.get(proc.base + "/metrics", timeout=10).text
    return int(metric(text, "nv_inference_request_success", model="tiny"))


def test_a_broken_or_unreadable_update_is_refused_once_and_the_old_version_keeps_answering(versions, tmp_path):
    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    proc = ServerProcess(served, tmp_path, "--watch", "--watch-interval", str(INTERVAL))
    try:
        publish(versions["broken"], served)
        refused = wait_for("the refusal in the index", lambda: [e for e in index(proc.base) if e["state"] != "READY"])
        assert refused[0]["version"] == "2" and "failed verification: FAIL model.onnx" in refused[0]["reason"]
        reply = infer(proc.base, "tiny")
        assert reply.status_code == 200 and reply.json()["model_version"] == "1"
        np.testing.assert_allclose(answer(reply), reference(versions["v1"]), atol=1e-6)
        time.sleep(5 * INTERVAL)  # more polls of the same refused files: no new attempt, no new line
        text = httpx.get(proc.base + "/metrics").text
        assert metric(text, "edgecnn_model_loads_total", model="tiny", outcome="refused") == 1
        unreadable = tmp_path / "unreadable"
        shutil.copytree(versions["v1"], unreadable)
        (unreadable / "model.onnx").write_bytes(b"not an onnx file")
        publish(unreadable, served)
        wait_for(
            "the second refusal",
            lambda: (
                "loads" in httpx.get(proc.base + "/metrics").text
                and metric(
                    httpx.get(proc.base + "/metrics").text, "edgecnn_model_loads_total", model="tiny", outcome="refused"
                )
                == 2
            ),
        )
        assert infer(proc.base, "tiny").json()["model_version"] == "1"
        publish(versions["v2"], served)  # a good one after bad ones: a number of its own (2 and 3 were refused)
        wait_for("version 4", lambda: infer(proc.base, "tiny").json()["model_version"] == "4")
        assert index(proc.base) == [{"name": "tiny", "version": "4", "state": "READY", "reason": ""}]
    finally:
        assert proc.stop() == 0
    lines = [line for line in proc.stderr_path.read_text().splitlines() if line.startswith("refused tiny")]
    assert len(lines) == 2 and "failed verification" in lines[0] and "Traceback" not in proc.stderr_path.read_text()
    assert [line.split(":")[0] for line in lines] == ["refused tiny version 2", "refused tiny version 3"]


def test_an_update_without_the_verification_set_is_refused_while_the_served_version_was_verified(versions, tmp_path):
    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    proc = ServerProcess(served, tmp_path, "--watch", "--watch-interval", str(INTERVAL))
    try:
        unchecked = shutil.copytree(versions["broken"], tmp_path / "unchecked")
        (unchecked / "verification.npz").unlink()  # the set that would fail it, taken away
        publish(unchecked, served)
        refused = wait_for("the refusal in the index", lambda: [e for e in index(proc.base) if e["state"] != "READY"])
        assert refused[0]["version"] == "2" and "has no verification set" in refused[0]["reason"], refused
        assert "version 1 was verified" in refused[0]["reason"]
        reply = infer(proc.base, "tiny")
        assert reply.status_code == 200 and reply.json()["model_version"] == "1"
        publish(versions["v2"], served)  # with its set again: checked and served
        wait_for("version 3", lambda: infer(proc.base, "tiny").json()["model_version"] == "3")
    finally:
        assert proc.stop() == 0


def test_a_model_folder_deleted_while_serving_answers_503_and_the_others_go_on(versions, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(versions["v1"], root / "kept")
    shutil.copytree(versions["v2"], root / "doomed")
    proc = ServerProcess(root, tmp_path, "--watch", "--watch-interval", str(INTERVAL))
    try:
        assert infer(proc.base, "doomed").status_code == 200
        shutil.rmtree(root / "doomed")
        gone = wait_for(
            "503 from the deleted model", lambda: (r := infer(proc.base, "doomed")).status_code == 503 and r
        )
        assert "'doomed' is not available: its files are gone" in gone.json()["error"]
        assert httpx.get(proc.base + "/v2/models/doomed/ready").status_code == 503
        assert infer(proc.base, "kept").status_code == 200
        assert {"name": "doomed", "version": "", "state": "UNAVAILABLE"}.items() <= index(proc.base)[0].items()
        shutil.copytree(versions["v1"], root / "doomed")  # back again: the next version
        wait_for("the model back", lambda: infer(proc.base, "doomed").status_code == 200)
        assert infer(proc.base, "doomed").json()["model_version"] == "2"
    finally:
        assert proc.stop() == 0, proc.stderr_path.read_text()


# -- Triton's repository extension ---------------------------------------------------------------
def test_tritonclient_lists_loads_and_unloads_through_the_same_verify_gate(versions, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(versions["v1"], root / "alpha")
    shutil.copytree(versions["v2"], root / "beta")
    proc = ServerProcess(root, tmp_path, "--model-control", "explicit")
    client = triton.InferenceServerClient(f"127.0.0.1:{proc.port}")
    try:
        listed = client.get_model_repository_index()
        assert [(m["name"], m["version"], m["state"]) for m in listed] == [
            ("alpha", "1", "READY"),
            ("beta", "1", "READY"),
        ]
        client.unload_model("beta")
        assert not client.is_model_ready("beta") and infer(proc.base, "beta").status_code == 503
        client.load_model("beta")
        assert client.is_model_ready("beta") and client.get_model_metadata("beta")["versions"] == ["2"]
        publish(versions["broken"], root / "alpha")
        with pytest.raises(InferenceServerException, match="failed verification"):
            client.load_model("alpha")
        assert infer(proc.base, "alpha").json()["model_version"] == "1"
        assert {"name": "alpha", "version": "2", "state": "UNAVAILABLE"}.items() <= client.get_model_repository_index()[
            1
        ].items()
        with pytest.raises(InferenceServerException, match="no model 'gamma'"):
            client.load_model("gamma")
    finally:
        client.close()
        assert proc.stop() == 0, proc.stderr_path.read_text()


def test_a_load_with_a_config_or_files_is_refused_not_done_without_them(versions, tmp_path):
    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    proc = ServerProcess(served, tmp_path, "--model-control", "explicit")
    client = triton.InferenceServerClient(f"127.0.0.1:{proc.port}")
    try:
        with pytest.raises(InferenceServerException, match="loads a model from its folder only"):
            client.load_model("tiny", config=json.dumps({"max_batch_size": 4}))
        with pytest.raises(InferenceServerException, match="loads a model from its folder only"):
            client.load_model("tiny", files={"file:1/model.onnx": b"onnx bytes"})
        assert client.get_model_metadata("tiny")["versions"] == ["1"]  # nothing was loaded
        client.load_model("tiny")  # a plain load (tritonclient sends {}) still reloads it
        assert client.get_model_metadata("tiny")["versions"] == ["2"]
        for body, error in (
            (b"[1, 2]", "body must be a JSON object"),
            (b"{oops", "body is not valid JSON"),
            (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
            (b'{"parameters": "abc"}', "parameters must be a JSON object"),
        ):
            reply = httpx.post(f"{proc.base}/v2/repository/models/tiny/load", content=body)
            assert reply.status_code == 400 and error in reply.json()["error"], reply.text
        assert client.get_model_metadata("tiny")["versions"] == ["2"]
    finally:
        client.close()
        assert proc.stop() == 0, proc.stderr_path.read_text()


def test_model_control_is_off_by_default_and_needs_the_token_when_one_is_set(versions, tmp_path):
    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    proc = ServerProcess(served, tmp_path)
    try:
        assert httpx.post(proc.base + "/v2/repository/models/tiny/load").status_code == 404
    finally:
        assert proc.stop() == 0
    token = "s3cret-token-of-16+"
    proc = ServerProcess(served, tmp_path, "--model-control", "explicit", "--control-token", token)
    client = triton.InferenceServerClient(f"127.0.0.1:{proc.port}")
    try:
        with pytest.raises(InferenceServerException, match="Authorization: Bearer"):
            client.load_model("tiny")
        client.load_model("tiny", headers={"Authorization": f"Bearer {token}"})
        assert client.get_model_metadata("tiny")["versions"] == ["2"]
        for wrong in (f"Basic {token}", f"Bearer {token}x", f"Bearer {token[:-1]}", token, f"Bearer{token}"):
            reply = httpx.post(f"{proc.base}/v2/repository/models/tiny/load", headers={"Authorization": wrong})
            assert reply.status_code == 401, wrong
        # the scheme is case-insensitive (RFC 9110): curl users type "bearer"
        reply = httpx.post(f"{proc.base}/v2/repository/models/tiny/load", headers={"Authorization": f"bearer {token}"})
        assert reply.status_code == 200 and client.get_model_metadata("tiny")["versions"] == ["3"]
    finally:
        client.close()
        assert proc.stop() == 0
    cli = CliRunner().invoke(cli_app, ["serve", str(served), "--watch", "--model-control", "explicit"])
    assert cli.exit_code == 1 and "exclude each other" in cli.output


def test_a_control_token_no_header_can_carry_exactly_is_refused_in_one_line():
    """Header values are ASCII (non-ASCII arrives mangled) and lose their outer spaces on the way: such a
    token could never be matched, so serve refuses it (before it loads anything), without showing it."""
    from edgecnn.errors import SettingError

    for token in ("jeton-sécurisé-0123456789", " padded-token-0123456789 ", "tab\tin-the-token-0123456789"):
        with pytest.raises(SettingError) as refused:
            ServeConfig(model_control="explicit", control_token=token)
        assert refused.value.message("--control-token").startswith("--control-token <hidden>: expected visible ASCII")
    assert ServeConfig(model_control="explicit", control_token="Az09-._~+/=!#$%&*").control_token


# -- SIGTERM while an update is being loaded -----------------------------------------------------
def test_sigterm_during_a_reload_exits_0_even_with_the_load_still_going(versions, tmp_path):
    """The load is held at a gate (a file that never appears) so the signal surely comes during it."""
    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    loading = tmp_path / "loading"
    script = (
        "import sys, time, pathlib\n"
        "import edgecnn.serve.repository as r\n"
        "real = r.load\n"
        "def gated(source, config):\n"
        f"    pathlib.Path({str(loading)!r}).touch()\n"
        "    while True: time.sleep(0.05)\n"
        "r.load = lambda source, config: gated(source, config) if r._GATED else real(source, config)\n"
        "r._GATED = False\n"
        "import edgecnn.serve.repository\n"
        "orig_update = r.Repository._update\n"
        "async def update(self, service, source):\n"
        "    r._GATED = True\n"
        "    return await orig_update(self, service, source)\n"
        "r.Repository._update = update\n"
        "from edgecnn.cli import app\n"
        "sys.argv = ['edgecnn'] + sys.argv[1:]\n"
        "app()\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "serve", str(served), "--port", str(port), "--watch", "--watch-interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for("the server", lambda: _ready(port))
        publish(versions["v2"], served)
        wait_for("the load to start", loading.exists)
        assert infer(f"http://127.0.0.1:{port}", "tiny").json()["model_version"] == "1"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert code == 0 and "Traceback" not in err, err


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_index_is_json_of_triton_s_shape(versions, tmp_path):
    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    proc = ServerProcess(served, tmp_path)
    try:
        reply = httpx.post(proc.base + "/v2/repository/index", timeout=10)
        assert reply.headers["content-type"] == "application/json"
        assert json.loads(reply.content) == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]
        assert httpx.post(proc.base + "/v2/repository/index", headers={"Host": "evil.example"}).status_code == 400
    finally:
        assert proc.stop() == 0


def test_a_swapped_out_version_finishes_its_request_then_frees_its_session(versions, tmp_path):
    """In process, to see the old runner go: a request holding version 1 across the swap is answered
    by version 1; once it is done, version 1's batcher stops and its runner is collected."""
    import asyncio
    import gc
    import weakref

    from edgecnn.serve.repository import Repository
    from edgecnn.serve.config import ServeConfig

    served = shutil.copytree(versions["v1"], tmp_path / "serving" / "tiny")
    repository = Repository(ServeConfig(max_queue_delay_ms=0), served)
    assert repository.open() == ["checked tiny: " + repository.models["tiny"].current.verified.line()]

    async def scenario():
        await repository.start()
        service = repository.service("tiny")
        runner = weakref.ref(service.current.runner)
        held = service.acquire(type("Request", (), {"path_params": {}})())  # a request in flight on version 1
        publish(versions["v2"], served)
        await repository.poll()
        assert service.current.number == 2 and held.number == 1
        np.testing.assert_allclose(await held.batcher.submit(ROW), reference(versions["v1"]), atol=1e-6)
        new = service.acquire(type("Request", (), {"path_params": {}})())
        np.testing.assert_allclose(await new.batcher.submit(ROW), reference(versions["v2"]), atol=1e-6)
        new.release()
        assert runner() is not None and held.runner is not None  # still held: not freed
        held.release()
        for _ in range(500):
            if held.runner is None:
                break
            await asyncio.sleep(0.01)
        gc.collect()
        assert held.runner is None and runner() is None
        await repository.stop(5)

    asyncio.run(scenario())


def test_a_model_folder_added_to_a_watched_empty_root_is_served_after_its_check(versions, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    proc = ServerProcess(root, tmp_path, "--watch", "--watch-interval", str(INTERVAL))
    try:
        assert index(proc.base) == [] and infer(proc.base, "late").status_code == 404
        publish_new = root / ".late.staging"
        shutil.copytree(versions["v2"], publish_new)
        publish_new.rename(root / "late")
        reply = wait_for("the new model", lambda: (r := infer(proc.base, "late")).status_code == 200 and r)
        assert reply.json()["model_version"] == "1"
        np.testing.assert_allclose(answer(reply), reference(versions["v2"]), atol=1e-6)
    finally:
        assert proc.stop() == 0, proc.stderr_path.read_text()
    assert "serving late version 1" in proc.stderr_path.read_text()


def _tune_serving(folder: Path, max_batch_size: int, max_queue_delay_ms: float) -> None:
    """A deploy.json as `edgecnn tune` then `tune --serve` write it on this machine (its model.onnx, default
    run settings, the given serving settings)."""
    from edgecnn.tuned_config import DEPLOY_FILE, DEPLOY_FORMAT, fingerprint

    chosen = {"max_batch_size": max_batch_size, "max_queue_delay_ms": max_queue_delay_ms}
    deploy = {
        "format": DEPLOY_FORMAT,
        "machine": fingerprint(),
        "chosen": {"file": "model.onnx", "runner": {}, "name": "model.onnx"},
        "serve": {"chosen": chosen, "chosen_label": "", "measured": {}, "clients": 2},
    }
    (folder / DEPLOY_FILE).write_text(json.dumps(deploy))


def test_each_model_s_metadata_states_its_own_tuned_largest_batch(versions, tmp_path):
    root = tmp_path / "models"
    _tune_serving(shutil.copytree(versions["v1"], root / "tuned"), 4, 0.5)
    shutil.copytree(versions["v2"], root / "plain")
    proc = ServerProcess(root, tmp_path, "--max-batch-size", "16")
    try:
        tuned = httpx.get(proc.base + "/v2/models/tuned").json()["parameters"]
        plain = httpx.get(proc.base + "/v2/models/plain").json()["parameters"]
        assert tuned["max_batch_size"] == 16 and plain["max_batch_size"] == 16  # typed: it wins
    finally:
        assert proc.stop() == 0, proc.stderr_path.read_text()
    proc = ServerProcess(root, tmp_path)
    try:
        tuned = httpx.get(proc.base + "/v2/models/tuned").json()["parameters"]
        plain = httpx.get(proc.base + "/v2/models/plain").json()["parameters"]
        assert tuned["max_batch_size"] == 4  # tune --serve's, which its batcher runs
        assert plain["max_batch_size"] == ServeConfig().max_batch_size
    finally:
        assert proc.stop() == 0, proc.stderr_path.read_text()
