"""`edgecnn serve` over real HTTP on loopback (Triton's client and httpx), plus in-process fault tests."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from typer.testing import CliRunner

from conftest import linear_reference, make_linear_onnx, write_image
from edgecnn.launch import ServeProcess, free_port  # noqa: F401  (free_port: used by other test modules)
from edgecnn.cli import app as cli_app
from edgecnn.errors import EdgecnnError
from edgecnn.runtime import Runner, RunnerConfig
from edgecnn.serve.config import ServeConfig, default_model_name
from edgecnn.serve.server import create_app

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (8, 8, 1)


# -- a server process per module, stopped by its id ----------------------------------------------
class ServerProcess(ServeProcess):
    """`edgecnn serve` in a child process (edgecnn.launch), its output kept in `log_dir` for asserts."""

    def __init__(self, model: Path, log_dir: Path, *options: str):
        super().__init__(model, options)
        self.stdout_path, self.stderr_path = log_dir / f"serve-{self.port}.out", log_dir / f"serve-{self.port}.err"
        with open(self.stdout_path, "w") as self.stdout, open(self.stderr_path, "w") as self.stderr:
            try:
                self.start()
            except EdgecnnError as exc:
                raise AssertionError(f"{exc}: {self.stderr_path.read_text()}") from None


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_linear_onnx(tmp_path_factory.mktemp("serve") / "tiny" / "model.onnx")


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    proc = ServerProcess(
        model_path,
        tmp_path_factory.mktemp("logs"),
        "--max-batch-size",
        "8",
        "--max-queue-delay-ms",
        "20",
        "--max-body-bytes",
        "65536",
    )
    yield proc
    assert proc.stop() == 0, proc.stderr_path.read_text()


@pytest.fixture
def client(server):
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def png_claiming(width: int, height: int) -> bytes:
    """A few-byte PNG whose header claims width x height pixels (a decompression-bomb stand-in)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# -- metadata and readiness ------------------------------------------------------------------
def test_server_and_model_metadata_follow_the_v2_protocol(client, server):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", model_version="1")
    meta = client.get_server_metadata()
    assert meta["name"] == "edgecnn" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("tiny")
    assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 8, 8, 1]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert model["parameters"]["class_names"] == ["a", "b", "c"]
    assert httpx.get(server.base + "/v2/models/tiny/versions/1").json() == model
    assert default_model_name("models/digits/model.int8.onnx") == "digits"


# -- inference -------------------------------------------------------------------------------
def test_json_inference_with_tritons_client_equals_the_reference(client, model_path):
    batch = images(5, seed=1)
    inp = triton.InferInput("image", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch, binary_data=False)
    result = client.infer(
        "tiny", [inp], outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)], request_id="r-1"
    )
    assert result.get_response()["id"] == "r-1"
    np.testing.assert_allclose(result.as_numpy("probabilities"), linear_reference(model_path, batch), atol=1e-6)


def test_binary_inference_with_tritons_client_equals_the_reference(client, model_path):
    batch = images(7, seed=2)
    inp = triton.InferInput("image", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch, binary_data=True)
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=True)]
    for version in ("", "1"):
        result = client.infer("tiny", [inp], outputs=wanted, model_version=version)
        assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 7 * 3 * 4
        np.testing.assert_allclose(result.as_numpy("probabilities"), linear_reference(model_path, batch), atol=1e-6)
    no_outputs = client.infer("tiny", [inp])  # tritonclient then asks for binary_data_output
    np.testing.assert_allclose(no_outputs.as_numpy("probabilities"), linear_reference(model_path, batch), atol=1e-6)
    gzipped = client.infer("tiny", [inp], outputs=wanted, request_compression_algorithm="gzip")
    np.testing.assert_allclose(gzipped.as_numpy("probabilities"), linear_reference(model_path, batch), atol=1e-6)


def test_classification_output_returns_top_k_score_index_label(client, model_path):
    batch = images(3, seed=3)
    inp = triton.InferInput("image", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    result = client.infer("tiny", [inp], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    reference = linear_reference(model_path, batch)
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 2)
    for row, ref in zip(top, reference):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(ref.argmax()) and label == "abc"[int(index)]
        assert float(score) == pytest.approx(float(ref.max()), abs=1e-6)


def test_nested_json_data_and_the_request_id_over_plain_http(server, model_path):
    batch = images(2, seed=4)
    body = {
        "id": "nested",
        "inputs": [{"name": "image", "shape": [2, 8, 8, 1], "datatype": "UINT8", "data": batch.tolist()}],
    }
    reply = httpx.post(server.base + "/v2/models/tiny/infer", json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["id"] == "nested" and answer["model_name"] == "tiny"
    out = answer["outputs"][0]
    assert out["shape"] == [2, 3] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.reshape(out["data"], (2, 3)), linear_reference(model_path, batch), atol=1e-6)


def test_classify_endpoint_agrees_with_the_offline_runner(server, model_path, tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    path = write_image(tmp_path / "photo.png", rgb)
    runner = Runner(model_path, RunnerConfig(device="cpu"))
    offline = runner.predict([runner.load(path)])[0]
    order = np.argsort(-offline)
    data = path.read_bytes()
    raw = httpx.post(
        server.base + "/v2/models/tiny/classify?top_k=2", content=data, headers={"content-type": "image/png"}
    )
    form = httpx.post(server.base + "/v2/models/tiny/predict", files={"image": ("photo.png", data, "image/png")})
    assert raw.status_code == 200 and form.status_code == 200, (raw.text, form.text)
    for answer, k in ((raw.json(), 2), (form.json(), 3)):
        predictions = answer["predictions"]
        assert [p["index"] for p in predictions] == order[:k].tolist()
        assert [p["label"] for p in predictions] == ["abc"[i] for i in order[:k]]
        np.testing.assert_allclose([p["probability"] for p in predictions], offline[order[:k]], atol=1e-6)


def test_served_answers_equal_edgecnn_predict_on_the_same_image_files(client, server, tmp_path):
    from edgecnn.predict import PredictConfig, predict

    rng = np.random.default_rng(11)
    paths = [
        write_image(tmp_path / f"img{i}.png", rng.integers(0, 256, size=(8, 8, 1), dtype=np.uint8)) for i in range(6)
    ]
    offline = predict(
        PredictConfig(model=server.model, inputs=tuple(paths), top_k=3, runner=RunnerConfig(device="cpu"))
    )
    by_path = {Path(r.path).name: r for r in offline.rows}
    runner = Runner(server.model, RunnerConfig(device="cpu"))
    batch = np.stack([runner.load(p) for p in paths])

    inp = triton.InferInput("image", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch, binary_data=True)
    served = client.infer("tiny", [inp], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)])
    probabilities = served.as_numpy("probabilities")

    for path, row in zip(paths, probabilities):
        expected = by_path[path.name].top
        order = np.argsort(-row)[:3]
        assert ["abc"[i] for i in order] == [label for label, _ in expected]
        np.testing.assert_allclose(row[order], [p for _, p in expected], atol=1e-6)
        answer = httpx.post(server.base + "/v2/models/tiny/classify?top_k=3", content=path.read_bytes()).json()
        assert [(p["label"], pytest.approx(p["probability"], abs=1e-6)) for p in answer["predictions"]] == list(
            expected
        )


def test_concurrent_clients_each_get_their_own_rows_and_requests_are_batched(server, model_path):
    before = httpx.get(server.base + "/metrics").text
    failures, sent_rows = [], []

    def client_thread(seed: int):
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.base, timeout=30) as http:
            for i in range(8):
                n = int(rng.integers(1, 4))
                batch = rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
                if i % 2:
                    raw = batch.tobytes()
                    header = json.dumps(
                        {
                            "inputs": [
                                {
                                    "name": "image",
                                    "shape": list(batch.shape),
                                    "datatype": "UINT8",
                                    "parameters": {"binary_data_size": len(raw)},
                                }
                            ],
                            "parameters": {"binary_data_output": True},
                        }
                    ).encode()
                    reply = http.post(
                        "/v2/models/tiny/infer",
                        content=header + raw,
                        headers={"Inference-Header-Content-Length": str(len(header))},
                    )
                    length = int(reply.headers["inference-header-content-length"])
                    got = np.frombuffer(reply.content[length:], dtype="<f4").reshape(n, 3)
                else:
                    reply = http.post(
                        "/v2/models/tiny/infer",
                        json={
                            "inputs": [
                                {
                                    "name": "image",
                                    "shape": list(batch.shape),
                                    "datatype": "UINT8",
                                    "data": batch.ravel().tolist(),
                                }
                            ]
                        },
                    )
                    got = np.reshape(reply.json()["outputs"][0]["data"], (n, 3))
                if not np.allclose(got, linear_reference(model_path, batch), atol=1e-6):
                    failures.append((seed, i))
                sent_rows.append(n)

    threads = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == [] and len(sent_rows) == 16 * 8
    after = httpx.get(server.base + "/metrics").text
    delta = {
        name: metric(after, name) - metric(before, name)
        for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success")
    }
    assert delta["nv_inference_request_success"] == 128
    assert delta["nv_inference_count"] == sum(sent_rows)  # every row ran exactly once
    assert delta["nv_inference_exec_count"] < 128  # requests were merged into shared model runs
    merged = metric(after, "edgecnn_batch_size_count") - metric(after, "edgecnn_batch_size_bucket", le="4")
    assert merged > 0  # batches above 4 rows ran: more than any single request carries (3)
    assert metric(after, "edgecnn_batch_size_bucket", le="8") == metric(
        after, "edgecnn_batch_size_count"
    )  # never above 8


# -- limits and faults over HTTP -------------------------------------------------------------
def infer_body(data, shape=(1, 8, 8, 1), datatype="UINT8", name="image") -> dict:
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(
    "path, kwargs, status, message",
    [
        ("/v2/models/tiny/infer", {"content": b"x" * 100_000}, 413, "more than the 65,536-byte limit"),
        (
            "/v2/models/tiny/infer",
            {"json": infer_body([0] * 32, shape=(1, 4, 8, 1))},
            400,
            r"shape [1, 4, 8, 1] does not match the model's [-1, 8, 8, 1]",
        ),
        (
            "/v2/models/tiny/infer",
            {"json": infer_body([0.5] * 64, datatype="FP32")},
            400,
            "datatype FP32 does not match the model's UINT8",
        ),
        ("/v2/models/tiny/infer", {"json": infer_body([0] * 64, name="pixels")}, 400, "unknown input 'pixels'"),
        ("/v2/models/tiny/infer", {"content": b"{oops"}, 400, "not valid JSON"),
        (
            "/v2/models/other/infer",
            {"json": infer_body([0] * 64)},
            404,
            "unknown model 'other': this server serves 'tiny'",
        ),
        ("/v2/models/tiny/versions/2/infer", {"json": infer_body([0] * 64)}, 404, "has no version '2'"),
        ("/v2/models/tiny/classify", {"content": b"not an image"}, 400, "not a decodable image"),
        (
            "/v2/models/tiny/classify",
            {"content": png_claiming(5000, 5000)},
            413,
            "5000x5000 is more than the 16,000,000-pixel limit",
        ),
        ("/v2/models/tiny/classify", {"content": b""}, 400, "no image"),
        ("/v2/models/tiny/classify?top_k=two", {"content": b"x"}, 400, "top_k='two'"),
    ],
)
def test_bad_requests_get_a_4xx_json_error_saying_why(server, path, kwargs, status, message):
    reply = httpx.post(server.base + path, **kwargs)
    assert reply.status_code == status
    assert message in reply.json()["error"]


def test_unknown_routes_and_methods_answer_json_errors(server, client):
    assert httpx.get(server.base + "/v3/nothing").json() == {"error": "Not Found: GET /v3/nothing"}
    reply = httpx.get(server.base + "/v2/models/tiny/infer")
    assert reply.status_code == 405 and "Method Not Allowed" in reply.json()["error"]
    assert "POST" in reply.headers["allow"]  # HTTP requires Allow on a 405
    with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


def test_metrics_are_valid_prometheus_text(server):
    httpx.post(server.base + "/v2/models/tiny/infer", json=infer_body([1] * 64))
    reply = httpx.get(server.base + "/metrics")
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')
    for line in reply.text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    text = reply.text
    assert metric(text, "edgecnn_http_requests_total", endpoint="infer", code="200") >= 1
    buckets = [float(v) for v in re.findall(r"^edgecnn_request_duration_seconds_bucket\{.*\} (\S+)$", text, re.M)]
    assert buckets == sorted(buckets) and buckets[-1] == metric(text, "edgecnn_request_duration_seconds_count")
    assert metric(text, "edgecnn_queue_depth") == 0  # nothing is waiting once the answer came back
    # the request above waited for a batch and ran: both show as time and as counts
    assert (
        metric(text, "nv_inference_queue_duration_us") > 0
        and metric(text, "nv_inference_compute_infer_duration_us") > 0
    )
    assert metric(text, "edgecnn_queue_duration_seconds_count") >= 1
    assert metric(text, "edgecnn_inference_duration_seconds_count") >= 1
    failures = metric(text, "nv_inference_request_failure")  # other tests on this server may have failed some
    assert failures >= 0 and failures == int(failures)


def test_openapi_document_describes_the_json_endpoints(server):
    doc = httpx.get(server.base + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v2", "/v2/health/ready", "/v2/models/tiny", "/v2/models/tiny/infer", "/v2/models/tiny/classify"} <= set(
        doc["paths"]
    )
    refs = re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc))
    assert refs and set(refs) <= set(doc["components"]["schemas"])


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(model_path, tmp_path):
    srv = ServerProcess(
        model_path, tmp_path, "--max-queue-delay-ms", "2500", "--max-batch-size", "64", "--drain-delay", "0"
    )  # the listener closes at once (tests/test_shutdown.py: with a delay)
    try:
        batch = images(1, seed=9)
        reply = {}
        worker = threading.Thread(
            target=lambda: reply.update(
                r=httpx.post(srv.base + "/v2/models/tiny/infer", json=infer_body(batch.ravel().tolist()), timeout=30)
            )
        )
        worker.start()
        deadline = time.monotonic() + 10
        while metric(httpx.get(srv.base + "/metrics").text, "nv_inference_pending_request_count") < 1:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.02)
        srv.proc.terminate()
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting connections
            httpx.get(srv.base + "/v2/health/live", timeout=2)
        worker.join(30)
        assert reply["r"].status_code == 200
        np.testing.assert_allclose(
            np.reshape(reply["r"].json()["outputs"][0]["data"], (1, 3)), linear_reference(model_path, batch), atol=1e-6
        )
        assert srv.proc.wait(30) == 0
        assert re.match(
            r"serving tiny on CPUExecutionProvider at http://127\.0\.0\.1:\d+/v2/models/tiny \(batching up to 64 rows; "
            r"\w+ \+ \w+; ready in [0-9.]+ s\)",
            srv.stdout_path.read_text(),
        )
    finally:
        srv.stop()


# -- faults in-process: a model run that fails, a queue that fills -----------------------------
class FaultyRunner:
    """A real Runner whose run fails `failures` times, or blocks until `gate` opens."""

    def __init__(self, runner: Runner, failures: int = 0, gate: threading.Event | None = None):
        self._runner, self.failures, self.gate, self.entered = runner, failures, gate, threading.Event()

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, batch):
        self.entered.set()
        if self.gate is not None and not self.gate.wait(20):
            raise RuntimeError("test gate never opened")
        if self.failures:
            self.failures -= 1
            raise RuntimeError("CUDA out of memory (simulated)")
        return self._runner.run(batch)


async def in_process(app, scenario):
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            return await scenario(http)


def test_a_failed_model_run_answers_500_and_the_server_keeps_serving(model_path):
    runner = FaultyRunner(Runner(model_path, RunnerConfig(device="cpu")), failures=1)
    app = create_app(runner, ServeConfig(max_queue_delay_ms=0))
    batch = images(2, seed=11)
    body = infer_body(batch.ravel().tolist(), shape=batch.shape)

    async def scenario(http):
        first = await http.post("/v2/models/tiny/infer", json=body)
        second = await http.post("/v2/models/tiny/infer", json=body)
        return first, second, (await http.get("/metrics")).text

    first, second, text = asyncio.run(in_process(app, scenario))
    assert first.status_code == 500
    assert first.json() == {"error": "inference failed: CUDA out of memory (simulated)"}
    assert second.status_code == 200
    np.testing.assert_allclose(
        np.reshape(second.json()["outputs"][0]["data"], (2, 3)), linear_reference(model_path, batch), atol=1e-6
    )
    assert metric(text, "nv_inference_request_failure") == 1 and metric(text, "nv_inference_request_success") == 1
    assert metric(text, "edgecnn_batch_failures_total") == 1
    assert metric(text, "edgecnn_http_requests_total", endpoint="infer", code="500") == 1


def test_a_full_queue_answers_503_with_retry_after(model_path):
    gate = threading.Event()
    runner = FaultyRunner(Runner(model_path, RunnerConfig(device="cpu")), gate=gate)
    app = create_app(runner, ServeConfig(max_batch_size=1, max_queue_delay_ms=0, max_queue=1), name="tiny")
    body = infer_body([7] * 64)
    batcher = app.state.service.batcher

    async def scenario(http):
        try:
            running = asyncio.ensure_future(http.post("/v2/models/tiny/infer", json=body))
            while not runner.entered.is_set():
                await asyncio.sleep(0.005)
            queued = asyncio.ensure_future(http.post("/v2/models/tiny/infer", json=body))
            while batcher.depth < 1:
                await asyncio.sleep(0.005)
            refused = await http.post("/v2/models/tiny/infer", json=body)
        finally:
            gate.set()
        return refused, await running, await queued

    refused, running, queued = asyncio.run(in_process(app, scenario))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "queue is full (1 requests waiting)" in refused.json()["error"]
    assert running.status_code == 200 and queued.status_code == 200
    assert running.json()["outputs"][0]["data"] == queued.json()["outputs"][0]["data"]


def test_a_chunked_body_over_the_limit_is_cut_off_with_413(model_path):
    app = create_app(Runner(model_path, RunnerConfig(device="cpu")), ServeConfig(max_body_bytes=50_000), name="tiny")

    async def chunks(*parts):  # no Content-Length: the server counts as it reads
        for part in parts:
            yield part

    async def scenario(http):
        over = await http.post("/v2/models/tiny/infer", content=chunks(*[b"x" * 20_000] * 5))
        under = await http.post("/v2/models/tiny/classify", content=chunks(b"y" * 100))
        return over, under

    over, under = asyncio.run(in_process(app, scenario))
    assert over.status_code == 413 and "more than the 50,000-byte limit" in over.json()["error"]
    assert under.status_code == 400 and "not a decodable image" in under.json()["error"]


# -- the command line ------------------------------------------------------------------------
def test_cli_errors_are_one_line_and_exit_1(model_path, tmp_path):
    cli = CliRunner()
    missing = cli.invoke(cli_app, ["serve", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 1 and "no such model file" in missing.output
    bad_batch = cli.invoke(cli_app, ["serve", str(model_path), "--max-batch-size", "0"])
    assert (
        bad_batch.exit_code == 1 and "--max-batch-size 0: expected 1 or more (1 turns batching off)" in bad_batch.output
    )
    bad_name = cli.invoke(cli_app, ["serve", str(model_path), "--name", "my model"])
    assert bad_name.exit_code == 1 and "cannot be used in URLs" in bad_name.output
    bad_level = cli.invoke(cli_app, ["serve", str(model_path), "--log-level", "loud"])
    assert bad_level.exit_code == 1 and "error: --log-level loud: expected one of critical, error" in bad_level.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = cli.invoke(cli_app, ["serve", str(model_path), "--port", str(busy.getsockname()[1])])
    assert taken.exit_code == 1 and "cannot listen on 127.0.0.1" in taken.output and "--port" in taken.output


def test_the_serving_path_never_imports_tensorflow(model_path):
    code = (
        "import sys, edgecnn.cli, edgecnn.serve.server\n"
        "from edgecnn.runtime import Runner\n"
        "from edgecnn.serve.server import create_app, warm_up\n"
        f"r = Runner({str(model_path)!r}); warm_up(r); create_app(r)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
