"""SIGTERM under load: every request the server took gets its answer, new ones are refused (503
on /ready first, then no listener), and the process exits 0 within the shutdown timeout."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np

from conftest import linear_reference, make_linear_onnx
from test_serve import ServerProcess, images, infer_body


def test_sigterm_under_load_loses_no_request_says_not_ready_first_and_exits_0(tmp_path):
    model = make_linear_onnx(tmp_path / "tiny" / "model.onnx")
    srv = ServerProcess(
        model,
        tmp_path,
        "--max-batch-size",
        "16",
        "--max-queue-delay-ms",
        "5",
        "--drain-delay",
        "1",
        "--shutdown-timeout",
        "10",
    )
    batch = images(1, seed=3)
    expected = linear_reference(model, batch)
    body = infer_body(batch.ravel().tolist())
    outcomes: dict[str, int] = {
        "ok": 0,
        "wrong": 0,
        "refused 503": 0,
        "connect refused": 0,
        "closed unanswered after the signal": 0,
        "lost": 0,
    }
    lost: list[str] = []
    lock, stop = threading.Lock(), threading.Event()
    signal_at = [float("inf")]  # time.monotonic() of SIGTERM, read by the clients

    def client():
        with httpx.Client(base_url=srv.base, timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    reply = http.post("/v2/models/tiny/infer", json=body)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    kind = "connect refused"  # never reached the server: nothing was taken
                    time.sleep(0.01)
                except httpx.TransportError as exc:  # sent, then no answer
                    if sent < signal_at[0]:  # the server had it before the signal: lost
                        kind = "lost"
                        lost.append(repr(exc))
                    else:  # sent as the listener closed (kernel backlog, a racing keep-alive): refused
                        kind = "closed unanswered after the signal"
                else:
                    if reply.status_code == 200:
                        data = np.reshape(reply.json()["outputs"][0]["data"], expected.shape)
                        kind = "ok" if np.allclose(data, expected, atol=1e-6) else "wrong"
                    else:
                        assert reply.status_code == 503 and reply.headers["Retry-After"] == "1", reply.text
                        kind = "refused 503"
                with lock:
                    outcomes[kind] += 1

    workers = [threading.Thread(target=client) for _ in range(16)]
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60  # under load first (however busy the machine), then the signal
        while outcomes["ok"] <= 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        served_before = outcomes["ok"]
        signal_at[0] = signalled = time.monotonic()
        srv.proc.terminate()
        ready = httpx.get(srv.base + "/v2/health/ready", timeout=5)  # a new connection, during the drain delay
        code = srv.proc.wait(15)
        exited_after = time.monotonic() - signalled
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        srv.stop()

    print("outcomes", outcomes, "exit", code, "after", round(exited_after, 2), "s")
    assert ready.status_code == 503 and ready.json() == {"error": "the server is shutting down"}
    assert code == 0 and exited_after < 10, (code, exited_after, srv.stderr_path.read_text())
    assert served_before > 100  # it was under load when the signal came
    assert outcomes["lost"] == 0 and outcomes["wrong"] == 0, (outcomes, lost[:3])
    assert outcomes["refused 503"] > 0 and outcomes["connect refused"] > 0, outcomes  # both refusal stages seen


def test_a_negative_drain_delay_is_a_one_line_error_before_anything_starts(tmp_path):
    from typer.testing import CliRunner

    from edgecnn.cli import app

    model = make_linear_onnx(tmp_path / "tiny" / "model.onnx")
    out = CliRunner().invoke(app, ["serve", str(model), "--drain-delay", "-1"])
    assert out.exit_code == 1
    assert out.stderr.strip() == "error: --drain-delay -1.0: expected 0 or more"
