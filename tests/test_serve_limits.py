"""`edgecnn serve` under attack (issue 16): every limit tried against a live server on 127.0.0.1.

Raw `socket` clients send partial heads, slow bodies and idle connections, few and short.
Each case is listed in docs/RELIABILITY.md.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest

from conftest import make_linear_onnx
from test_serve import ServerProcess, metric

ROWS_LIMIT, HEAD_LIMIT, BODY_LIMIT, BUDGET = 16, 4096, 65536, 200_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = make_linear_onnx(tmp_path_factory.mktemp("limits") / "tiny" / "model.onnx")
    proc = ServerProcess(
        model,
        tmp_path_factory.mktemp("logs"),
        "--max-request-rows",
        str(ROWS_LIMIT),
        "--max-header-bytes",
        str(HEAD_LIMIT),
        "--max-body-bytes",
        str(BODY_LIMIT),
        "--max-inflight-bytes",
        str(BUDGET),
        "--max-connections",
        "8",
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--allowed-hosts",
        "edge.example",
    )
    yield proc
    assert proc.stop() == 0, proc.stderr_path.read_text()


def connect(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.settimeout(5)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (at most 5 s)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def infer(server, body, **kwargs) -> httpx.Response:
    return httpx.post(server.base + "/v2/models/tiny/infer", json=body, timeout=10, **kwargs)


def tensor(rows: int, data=None, shape=None) -> dict:
    shape = shape if shape is not None else [rows, 8, 8, 1]
    return {
        "inputs": [
            {
                "name": "image",
                "shape": shape,
                "datatype": "UINT8",
                "data": data if data is not None else [0] * (rows * 64),
            }
        ]
    }


# -- High: one cheap request must not cost the server much ----------------------------------
def test_more_rows_than_max_request_rows_get_413_and_the_limit_itself_is_served(server):
    assert infer(server, tensor(ROWS_LIMIT)).status_code == 200
    over = infer(server, tensor(ROWS_LIMIT + 1))
    assert over.status_code == 413 and f"more than the {ROWS_LIMIT:,} one request may send" in over.json()["error"]


def test_a_small_gzip_body_declaring_a_huge_tensor_is_refused_before_it_is_allocated(server):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [262144, 8, 8, 1],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 262144 * 64},
                }
            ]
        }
    ).encode()
    body = gzip.compress(header)  # no tensor bytes at all: only the declared shape is huge
    reply = httpx.post(
        server.base + "/v2/models/tiny/infer",
        content=body,
        timeout=10,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Encoding": "gzip",
            "Content-Type": "application/octet-stream",
        },
    )
    assert reply.status_code == 413 and "16,777,216 bytes, more than the 65,536-byte limit" in reply.json()["error"]


def test_duplicate_outputs_get_400_instead_of_a_multiplied_response(server):
    body = tensor(1) | {"outputs": [{"name": "probabilities"}] * 1000}
    reply = infer(server, body)
    assert reply.status_code == 400 and "names an output more than once (1000 entries)" in reply.json()["error"]


def test_a_connection_that_sends_nothing_is_answered_408_and_closed_after_the_header_timeout(server):
    s = connect(server)
    started = time.monotonic()
    reply = read_all(s)
    assert status_of(reply) == 408 and b"--header-timeout" in reply
    assert 0.8 < time.monotonic() - started < 4


def test_a_half_sent_head_is_answered_408(server):
    s = connect(server)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    reply = read_all(s)
    assert status_of(reply) == 408


def test_a_head_over_max_header_bytes_gets_431(server):
    s = connect(server)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (4 * HEAD_LIMIT))
    reply = read_all(s)
    assert status_of(reply) == 431 and b"--max-header-bytes" in reply
    ok = connect(server)
    ok.sendall(
        b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Fine: " + b"a" * 1000 + b"\r\n\r\n"
    )
    assert status_of(read_all(ok)) == 200


def test_a_body_slower_than_the_body_timeout_gets_408(server):
    s = connect(server)
    s.sendall(
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"inputs"'
    )
    reply = read_all(s)
    assert status_of(reply) == 408 and b"--body-timeout" in reply


def test_connections_over_max_connections_are_answered_503_at_once(server):
    held = [connect(server) for _ in range(8)]
    try:
        time.sleep(0.1)
        extra = connect(server)
        reply = read_all(extra)
        assert status_of(reply) == 503 and b"--max-connections" in reply
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert httpx.get(server.base + "/v2/health/live").status_code == 200


def test_uploads_past_the_inflight_byte_budget_get_503_with_retry_after(server):
    held = []  # two uploads hold 60,000 bytes each of 64,000-byte bodies while a third one arrives
    for _ in range(2):
        held.append(connect(server))
        held[-1].sendall(
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 64000\r\n\r\n" + b" " * 60000
        )
    time.sleep(0.2)
    try:
        second = infer(server, {"pad": " " * 50000, **tensor(1)})  # ~100 KB: its body and its parse estimate
    finally:
        for s in held:
            s.close()
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "200,000-byte budget for requests in flight" in second.json()["error"]
    time.sleep(0.1)
    assert infer(server, {"pad": " " * 50000, **tensor(1)}).status_code == 200  # the first one gave its bytes back
    text = httpx.get(server.base + "/metrics").text
    assert metric(text, "edgecnn_refused_total", reason="inflight_bytes") >= 1
    assert metric(text, "edgecnn_refused_total", reason="header_timeout") >= 1


def test_an_ico_holding_a_large_png_is_refused_without_decoding_it(server):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (64, 64)).save(buffer, "ICO", sizes=[(64, 64)])
    reply = httpx.post(
        server.base + "/v2/models/tiny/classify", content=buffer.getvalue(), headers={"content-type": "image/x-icon"}
    )
    assert reply.status_code == 400 and "not a decodable image" in reply.json()["error"]


# -- Low: client input never answers 500 --------------------------------------------------
@pytest.mark.parametrize(
    "path, content, error",
    [
        ("/infer", b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        ("/infer", json.dumps(tensor(0, data=[], shape=[0, 2**40, 2**40])).encode(), "would take"),
        ("/classify?top_k=%C2%B2", b"x", "top_k='\u00b2'"),
        ("/classify?top_k=" + "9" * 5000, b"x", "expected a whole number of classes"),
    ],
)
def test_malformed_input_that_answered_500_now_gets_400_saying_why(server, path, content, error):
    reply = httpx.post(
        server.base + "/v2/models/tiny" + path,
        content=content,
        timeout=10,
        headers={"content-type": "application/json" if path == "/infer" else "image/png"},
    )
    assert reply.status_code == 400 and error in reply.json()["error"], reply.text


def test_a_foreign_host_header_is_refused_unless_allowed(server):
    foreign = infer(server, tensor(1), headers={"Host": "attacker.example"})
    assert foreign.status_code == 400 and "--allowed-hosts attacker.example" in foreign.json()["error"]
    assert infer(server, tensor(1), headers={"Host": "edge.example:8000"}).status_code == 200
    assert infer(server, tensor(1), headers={"Host": f"localhost:{server.port}"}).status_code == 200


def test_two_host_headers_are_refused_whichever_comes_first(server):
    import socket

    body = json.dumps(tensor(1)).encode()
    for first, second in (("localhost", "attacker.example"), ("attacker.example", "localhost")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: %s\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (first.encode(), second.encode(), len(body), body)
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400") and b"more than one Host header" in reply, reply[:200]


def test_a_text_plain_post_that_needs_no_cors_preflight_gets_415(server):
    reply = httpx.post(
        server.base + "/v2/models/tiny/infer", content=json.dumps(tensor(1)), headers={"content-type": "text/plain"}
    )
    assert reply.status_code == 415 and "send application/json or application/octet-stream" in reply.json()["error"]
    form = httpx.post(
        server.base + "/v2/models/tiny/classify",
        content=b"a=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415


def test_a_model_name_with_a_trailing_newline_is_refused():
    from edgecnn.errors import EdgecnnError
    from edgecnn.serve.config import check_name

    assert check_name("digits") == "digits"
    with pytest.raises(EdgecnnError, match="cannot be used in URLs"):
        check_name("digits\n")


def test_the_protocol_bounds_a_declared_tensor_without_the_server():
    from edgecnn.serve.protocol import ProtocolError, decode_request

    body = json.dumps(tensor(0, data=[], shape=[0, 2**40, 2**40])).encode()
    with pytest.raises(ProtocolError) as refused:
        decode_request(body, None, 1 << 20)
    assert refused.value.status == 400
    ok = decode_request(json.dumps(tensor(2, data=np.arange(128).tolist())).encode(), None, 128)
    assert ok.inputs[0].array.shape == (2, 8, 8, 1)


# -- Medium: the event loop stays free; callers that hung up are not run --------------------
def test_infer_json_is_parsed_in_the_decode_pool_not_on_the_event_loop(monkeypatch, tmp_path):
    import asyncio
    import threading

    import edgecnn.serve.server as serve_module
    import edgecnn.serve.service as service_module
    from edgecnn.runtime import Runner, RunnerConfig
    from test_serve import in_process

    threads, real = [], service_module.decode_request
    monkeypatch.setattr(
        service_module, "decode_request", lambda *a: (threads.append(threading.current_thread().name), real(*a))[1]
    )
    model = make_linear_onnx(tmp_path / "tiny" / "model.onnx")
    app = serve_module.create_app(Runner(model, RunnerConfig(device="cpu")), serve_module.ServeConfig())

    async def scenario(http):
        return await http.post("/v2/models/tiny/infer", json={"pad": " " * 70_000, **tensor(1)})  # over 64 KiB

    assert asyncio.run(in_process(app, scenario)).status_code == 200
    assert len(threads) == 1 and threads[0].startswith("edgecnn-decode")


def test_a_queued_request_whose_client_hung_up_is_dropped_and_counted(tmp_path):
    import threading

    import uvicorn

    from edgecnn.serve.admission import http_protocol
    from edgecnn.runtime import Runner, RunnerConfig
    from edgecnn.serve.config import ServeConfig
    from edgecnn.serve.server import create_app
    from test_serve import FaultyRunner, free_port

    gate = threading.Event()
    model = make_linear_onnx(tmp_path / "tiny" / "model.onnx")
    runner = FaultyRunner(Runner(model, RunnerConfig(device="cpu")), gate=gate)
    ran = []
    real_run = runner.run
    runner.run = lambda batch: (ran.append(len(batch)), real_run(batch))[1]
    config = ServeConfig(max_batch_size=1, max_queue_delay_ms=0)
    app = create_app(runner, config, name="tiny")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="error",
            lifespan="on",
            http=http_protocol(config, app.state.service.metrics.refused),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            time.sleep(0.01)
        first = threading.Thread(target=lambda: httpx.post(base + "/v2/models/tiny/infer", json=tensor(1), timeout=20))
        first.start()
        assert runner.entered.wait(10)
        body = json.dumps(tensor(3)).encode()
        gone = connect(type("S", (), {"port": port}))
        gone.sendall(
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        deadline = time.monotonic() + 5
        while app.state.service.batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        gone.close()  # hangs up while its 3 rows wait behind the stuck run
        deadline = time.monotonic() + 5
        while "client_gone" not in app.state.service.metrics.refusals and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        first.join(20)
        text = httpx.get(base + "/metrics").text
    finally:
        gate.set()
        server.should_exit = True
        thread.join(20)
    assert ran == [1]  # only the first request's row ran; the 3 rows of the one that hung up never did
    assert metric(text, "edgecnn_refused_total", reason="client_gone") == 1


def test_a_json_body_whose_parse_alone_would_pass_the_budget_gets_413(server):
    body = tensor(ROWS_LIMIT)  # 1,024 values: about 49 KB of parse cost, well under the budget
    assert infer(server, body).status_code == 200
    many = {"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "UINT8", "data": [0] * 5000}]}
    reply = infer(server, many)  # 10 KB of body, but 5,000 values cost ~240 KB to parse: more than the whole budget
    assert reply.status_code == 413 and "needs more than the 200,000-byte budget" in reply.json()["error"]


# -- SIGTERM while a long model run is going ------------------------------------------------
def make_slow_onnx(path):
    """The linear model plus (N x N) matrix products that add zero: a run of N rows costs ~N^3 work."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(make_linear_onnx(path)))
    graph = model.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    softmax.input[0] = "logits_slow"
    graph.initializer.append(numpy_helper.from_array(np.zeros((1, 3), np.float32), "zeros"))
    graph.node.extend(
        [
            helper.make_node("Transpose", ["x_flat"], ["x_t"]),
            helper.make_node("MatMul", ["x_flat", "x_t"], ["g1"]),
            helper.make_node("MatMul", ["g1", "g1"], ["g2"]),
            helper.make_node("MatMul", ["g2", "g1"], ["g3"]),
            helper.make_node("ReduceSum", ["g3"], ["s"], keepdims=1, noop_with_empty_axes=0),
            helper.make_node("Mul", ["s", "zeros"], ["z"]),
            helper.make_node("Add", ["logits", "z"], ["logits_slow"]),
        ]
    )
    nodes = list(graph.node)  # topological order: the Softmax last
    nodes.remove(softmax)
    del graph.node[:]
    graph.node.extend(nodes + [softmax])
    onnx.save(model, str(path))
    return path


def test_sigterm_during_a_long_model_run_exits_within_the_shutdown_timeout(tmp_path):
    import signal
    import threading

    rows = 6000  # two 6000^3 products: seconds of compute on a small machine
    model = make_slow_onnx(tmp_path / "slow" / "model.onnx")
    proc = ServerProcess(
        model,
        tmp_path,
        "--max-request-rows",
        str(rows),
        "--max-body-bytes",
        str(rows * 64 + 4096),
        "--max-inflight-bytes",
        str(64 << 20),
        "--shutdown-timeout",
        "0.5",
    )
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [rows, 8, 8, 1],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": rows * 64},
                }
            ]
        }
    ).encode()
    replies = []

    def send():
        try:
            replies.append(
                httpx.post(
                    proc.base + "/v2/models/slow/infer",
                    content=header + bytes(rows * 64),
                    timeout=60,
                    headers={
                        "Inference-Header-Content-Length": str(len(header)),
                        "Content-Type": "application/octet-stream",
                    },
                ).status_code
            )
        except httpx.TransportError as exc:
            replies.append(type(exc).__name__)

    client = threading.Thread(target=send)
    client.start()
    try:
        time.sleep(0.5)  # the run has started
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(10)
        took = time.monotonic() - started
    finally:
        proc.stop()
        client.join(60)
    assert code == 0 and took < 3.0, (code, took, proc.stderr_path.read_text())
    assert replies and replies[0] != 200  # it was cut off, not finished
    assert "exiting without it" in proc.stderr_path.read_text()


def test_bound_to_every_address_ip_literals_pass_and_names_need_allowed_hosts():
    from edgecnn.serve.admission import allowed_host_names, check_origin
    from edgecnn.serve.protocol import ProtocolError

    hosts = allowed_host_names("0.0.0.0", ("edge.local",))
    for host in ("192.168.1.5:8000", "[fe80::1]:8000", "localhost", "edge.local:80"):
        check_origin({"host": host}, "infer", hosts, "0.0.0.0")
    with pytest.raises(ProtocolError, match="--allowed-hosts rebind.example"):
        check_origin({"host": "rebind.example"}, "infer", hosts, "0.0.0.0")
    with pytest.raises(ProtocolError, match="is not this server's address"):
        check_origin({"host": "192.168.1.5"}, "infer", allowed_host_names("127.0.0.1"), "127.0.0.1")
    check_origin({"host": "anything"}, "classify", allowed_host_names("127.0.0.1", ("*",)), "127.0.0.1")


# -- issue 24: found by an attack on a live server --------------------------------------------
def test_an_inference_header_length_of_5000_digits_gets_400_not_500(server):
    body = json.dumps(tensor(1)).encode()
    logged = len(server.stderr_path.read_text())
    reply = httpx.post(
        server.base + "/v2/models/tiny/infer",
        content=body,
        headers={"content-type": "application/octet-stream", "Inference-Header-Content-Length": "9" * 5000},
        timeout=10,
    )
    assert reply.status_code == 400, reply.text
    assert "Inference-Header-Content-Length" in reply.json()["error"]
    assert "Traceback" not in server.stderr_path.read_text()[logged:]


@pytest.mark.parametrize(
    "path", ["/v2/models/tiny", "/v2/models/tiny/ready", "/v2", "/v2/health/ready", "/metrics", "/openapi.json", "/"]
)
def test_a_foreign_host_header_is_refused_on_every_route_not_only_inference(server, path):
    reply = httpx.get(server.base + path, headers={"Host": "evil.example"}, timeout=10)
    assert reply.status_code == 400 and "--allowed-hosts evil.example" in reply.json()["error"], reply.text
    assert httpx.get(server.base + path, headers={"Host": "edge.example"}, timeout=10).status_code == 200
