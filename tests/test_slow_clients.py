"""Slow clients (slowloris) cannot starve the others: many connections that send their headers or
bodies a byte at a time are closed by the header and body deadlines (408), while normal clients
beside them are answered at once."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import numpy as np

from conftest import make_linear_onnx
from test_serve import ServerProcess, images, infer_body

SLOW_HEADS, SLOW_BODIES = 40, 20


def drip(port: int, first: bytes, rest: bytes, every: float, stop: threading.Event, replies: list) -> None:
    """Send `first`, then `rest` one byte every `every` seconds, until the server answers or closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(every)
    s.sendall(first)
    reply = b""
    try:
        for byte in rest:
            if stop.is_set():
                break
            try:
                reply += s.recv(4096)
                if reply:
                    break
            except socket.timeout:
                pass
            s.sendall(bytes([byte]))
        s.settimeout(5)
        while chunk := s.recv(4096):
            reply += chunk
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        pass
    finally:
        s.close()
    replies.append(reply)


def test_slow_heads_and_bodies_are_cut_off_by_their_deadlines_while_others_are_served(tmp_path):
    model = make_linear_onnx(tmp_path / "tiny" / "model.onnx")
    srv = ServerProcess(model, tmp_path, "--header-timeout", "1", "--body-timeout", "1", "--max-connections", "128")
    body = infer_body(images(1, seed=5).ravel().tolist())
    head = (
        f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(str(body)) + 10_000}\r\n\r\n"
    ).encode()
    stop, replies, threads = threading.Event(), [], []
    try:
        for i in range(SLOW_HEADS):  # the head, a byte every 0.2 s: 2 minutes to send it all
            threads.append(threading.Thread(target=drip, args=(srv.port, b"", head, 0.2, stop, replies)))
        for i in range(SLOW_BODIES):  # the head at once, then the body a byte every 0.2 s
            threads.append(threading.Thread(target=drip, args=(srv.port, head, b"{" * 10_000, 0.2, stop, replies)))
        for t in threads:
            t.start()
        time.sleep(0.3)  # every slow connection is open and dripping

        latencies = []
        with httpx.Client(base_url=srv.base, timeout=10) as http:
            for _ in range(50):
                t0 = time.perf_counter()
                reply = http.post("/v2/models/tiny/infer", json=body)
                latencies.append(time.perf_counter() - t0)
                assert reply.status_code == 200, reply.text
        for t in threads:
            t.join(15)
    finally:
        stop.set()
        srv.stop()

    assert np.percentile(latencies, 99) < 0.5, latencies  # the normal client never waited behind the slow ones
    assert len(replies) == SLOW_HEADS + SLOW_BODIES
    statuses = [r.split(b" ", 2)[1] if r.startswith(b"HTTP/1.1 ") else b"closed" for r in replies]
    assert statuses.count(b"408") == SLOW_HEADS + SLOW_BODIES, statuses
