"""A load generator for `edgecnn serve` on loopback: N keep-alive clients, latency percentiles.

A minimal asyncio HTTP/1.1 client (one connection per client, requests sent back to back), so
that the generator stays cheap next to the server on a small machine. Used by `edgecnn tune
--serve` and `tools/loadtest.py`. It only ever sends to loopback addresses.

Device path: the standard library and NumPy.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import urllib.request
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import numpy as np

from edgecnn.errors import EdgecnnError

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
PAYLOADS = ("binary", "json", "png")


@dataclass(frozen=True)
class LoadResult:
    """One load level: how many answers, how fast, how long they took."""

    clients: int
    requests: int  # answered (any status)
    errors: int  # non-200 answers and dropped connections
    seconds: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_batch_size: float | None = None  # rows per model run on the server, from /metrics

    def to_dict(self) -> dict:
        return asdict(self)


class Connection(asyncio.Protocol):
    def __init__(self):
        self.buffer = bytearray()
        self.need = None
        self.status = 0
        self.waiter = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while self.waiter is not None:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).decode("latin-1")
                self.status = int(head[9:12])
                match = re.search(r"(?im)^content-length:\s*(\d+)", head)
                self.need = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < self.need:
                return
            del self.buffer[: self.need]
            self.need = None
            waiter, self.waiter = self.waiter, None
            waiter.set_result(self.status)

    def connection_lost(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    async def request(self, raw: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def raw_request(host: str, port: int, path: str, body: bytes, headers: dict) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_requests(host: str, port: int, name: str, model: dict, payload: str, count: int = 16) -> list[bytes]:
    """`count` different requests of one image each: v2 binary tensors, v2 JSON, or PNG to /classify.
    model: the server's /v2/models/NAME metadata."""
    inp = model["inputs"][0]
    shape = [1, *inp["shape"][1:]]
    dtype = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}[inp["datatype"]]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = rng.integers(0, 256, size=shape).astype(dtype)
        if payload == "png":
            from PIL import Image

            pixels = image[0].astype(np.uint8)
            if pixels.shape[0] in (1, 3) and pixels.shape[-1] not in (1, 3):  # NCHW
                pixels = pixels.transpose(1, 2, 0)
            buf = io.BytesIO()
            Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
            out.append(
                raw_request(host, port, f"/v2/models/{name}/classify", buf.getvalue(), {"Content-Type": "image/png"})
            )
            continue
        tensor = {"name": inp["name"], "shape": shape, "datatype": inp["datatype"]}
        if payload == "json":
            tensor["data"] = image.ravel().tolist()
            body = json.dumps({"inputs": [tensor]}).encode()
            out.append(raw_request(host, port, f"/v2/models/{name}/infer", body, {"Content-Type": "application/json"}))
        else:
            raw = image.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
            out.append(
                raw_request(
                    host,
                    port,
                    f"/v2/models/{name}/infer",
                    header + raw,
                    {"Inference-Header-Content-Length": len(header), "Content-Type": "application/octet-stream"},
                )
            )
    return out


async def drive(host: str, port: int, requests: list[bytes], clients: int, total: int, duration: float) -> dict:
    loop = asyncio.get_running_loop()
    connections = [(await loop.create_connection(Connection, host, port))[1] for _ in range(clients)]
    for i, conn in enumerate(connections):  # warm up every connection
        await conn.request(requests[i % len(requests)])
    latencies, errors, sent = [], 0, 0
    deadline = time.perf_counter() + duration

    async def client(conn: Connection, offset: int):
        nonlocal errors, sent
        i = offset
        while sent < total and time.perf_counter() < deadline:
            sent += 1
            t0 = time.perf_counter()
            try:
                status = await conn.request(requests[i % len(requests)])
            except ConnectionError:
                errors += 1
                return
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(c, k) for k, c in enumerate(connections)))
    seconds = time.perf_counter() - start
    for conn in connections:
        conn.transport.close()
    ms = np.asarray(latencies) * 1000.0 if latencies else np.zeros(1)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(latencies) / seconds, 1) if seconds > 0 else 0.0,
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)},
    }


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def counters(base: str) -> dict:
    """The server's inference and model-run counters (Triton's names) from /metrics."""
    text = get(base + "/metrics").decode()
    found = {}
    for key in ("nv_inference_count", "nv_inference_exec_count"):
        match = re.search(rf"^{key}{{[^}}]*}} (\d+)", text, re.M)
        found[key] = int(match.group(1)) if match else 0
    return found


def run_load(
    base: str, name: str, clients: int, max_requests: int, duration_s: float, payload: str = "binary"
) -> LoadResult:
    """Drive the server at `base` (loopback only) with `clients` keep-alive clients for at most
    `duration_s` seconds and `max_requests` requests; its latencies, throughput and mean batch size."""
    parts = urlsplit(base)
    host, port = parts.hostname, parts.port or 80
    if host not in LOOPBACK:
        raise EdgecnnError(f"{base}: the load generator only sends to loopback (127.0.0.1, localhost, ::1)")
    if payload not in PAYLOADS:
        raise EdgecnnError(f"payload {payload!r}: expected one of {', '.join(PAYLOADS)}")
    model = json.loads(get(f"{base}/v2/models/{name}"))
    requests = build_requests(host, port, name, model, payload)
    before = counters(base)
    result = asyncio.run(drive(host, port, requests, clients, max_requests, duration_s))
    after = counters(base)
    runs = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    rows = after["nv_inference_count"] - before["nv_inference_count"]
    return LoadResult(**result, mean_batch_size=round(rows / runs, 2) if runs else None)
