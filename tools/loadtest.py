"""Load test for `edgecnn serve`: throughput and latency vs. concurrency, batching on vs. off.

    .venv/bin/python tools/loadtest.py models/digits/model.int8.onnx
    .venv/bin/python tools/loadtest.py MODEL --concurrency 1,4,16,64 --requests 3000 --duration 10 \
        --payload binary --out loadtest.json
    .venv/bin/python tools/loadtest.py MODEL --url http://127.0.0.1:8000   # a server you started

Without --url it starts the server itself on a free loopback port, once with batching on
(--max-batch-size, default 32) and once with it off (--max-batch-size 1), and stops it
with SIGTERM. Each concurrency level sends at most --requests requests in at most
--duration seconds over keep-alive HTTP/1.1 connections (a minimal asyncio client, so the
generator stays cheap next to the server on a small machine). Loopback only.

Prints a table and writes JSON: requests/s, p50/p90/p99 latency, errors, and the mean
batch size the server ran (from /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# -- a minimal keep-alive HTTP/1.1 client ---------------------------------------------------
class _Connection(asyncio.Protocol):
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


def _raw_request(host: str, port: int, path: str, body: bytes, headers: dict) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_requests(host: str, port: int, name: str, model: dict, payload: str, count: int = 16) -> list[bytes]:
    """`count` different requests of one image each: v2 binary, v2 JSON, or PNG to /classify."""
    inp = model["inputs"][0]
    shape = [1, *inp["shape"][1:]]
    dtype = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}[inp["datatype"]]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = rng.integers(0, 256, size=shape).astype(dtype)
        if payload == "png":
            import io

            from PIL import Image

            pixels = image[0].astype(np.uint8)
            if pixels.shape[0] in (1, 3) and pixels.shape[-1] not in (1, 3):  # NCHW
                pixels = pixels.transpose(1, 2, 0)
            buf = io.BytesIO()
            Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
            out.append(
                _raw_request(host, port, f"/v2/models/{name}/classify", buf.getvalue(), {"Content-Type": "image/png"})
            )
            continue
        tensor = {"name": inp["name"], "shape": shape, "datatype": inp["datatype"]}
        if payload == "json":
            tensor["data"] = image.ravel().tolist()
            body = json.dumps({"inputs": [tensor]}).encode()
            out.append(_raw_request(host, port, f"/v2/models/{name}/infer", body, {"Content-Type": "application/json"}))
        else:
            raw = image.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
            out.append(
                _raw_request(
                    host,
                    port,
                    f"/v2/models/{name}/infer",
                    header + raw,
                    {"Inference-Header-Content-Length": len(header), "Content-Type": "application/octet-stream"},
                )
            )
    return out


async def _load(host: str, port: int, requests: list[bytes], concurrency: int, total: int, duration: float) -> dict:
    loop = asyncio.get_running_loop()
    connections = [(await loop.create_connection(_Connection, host, port))[1] for _ in range(concurrency)]
    for i, conn in enumerate(connections):  # warm up every connection
        await conn.request(requests[i % len(requests)])
    latencies, errors, sent = [], 0, 0
    deadline = time.perf_counter() + duration

    async def client(conn: _Connection, offset: int):
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
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 3),
        "throughput_rps": round(len(latencies) / seconds, 1),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)},
    }


# -- the server ---------------------------------------------------------------------------
def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _counters(base: str) -> dict:
    text = _get(base + "/metrics").decode()
    found = {}
    for key in ("nv_inference_count", "nv_inference_exec_count"):
        match = re.search(rf"^{key}{{[^}}]*}} (\d+)", text, re.M)
        found[key] = int(match.group(1)) if match else 0
    return found


def start_server(model: Path, extra: list[str]):
    """`edgecnn serve MODEL` on a free loopback port, ready (an `edgecnn.launch.ServeProcess`)."""
    from edgecnn.errors import EdgecnnError
    from edgecnn.launch import ServeProcess

    try:
        return ServeProcess(model, tuple(extra), stderr=subprocess.PIPE).start()
    except EdgecnnError as exc:
        raise SystemExit(str(exc)) from None


def sweep(base: str, name: str, payload: str, levels: list[int], total: int, duration: float) -> list[dict]:
    parts = urlsplit(base)
    host, port = parts.hostname, parts.port or 80
    model = json.loads(_get(f"{base}/v2/models/{name}"))
    requests = build_requests(host, port, name, model, payload)
    rows = []
    for level in levels:
        before = _counters(base)
        result = asyncio.run(_load(host, port, requests, level, total, duration))
        after = _counters(base)
        execs = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
        rows.append(
            {
                **result,
                "mean_batch_size": round(
                    (after["nv_inference_count"] - before["nv_inference_count"]) / max(execs, 1), 2
                ),
            }
        )
        print(_row(rows[-1], "?"), file=sys.stderr)
    return rows


def _row(r: dict, batching: str) -> str:
    return (
        f"{batching:>8} {r['concurrency']:>5} {r['requests']:>8} {r['errors']:>6} {r['throughput_rps']:>9.1f} "
        f"{r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mean_batch_size']:>7.2f}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the .onnx model (its folder name is the model name unless --name)")
    parser.add_argument(
        "--url", help="an already running server on loopback, e.g. http://127.0.0.1:8000 (default: start one)"
    )
    parser.add_argument("--name", help="model name in URLs (default: the model file's folder name)")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts (default 1,4,16,64)")
    parser.add_argument("--requests", type=int, default=2000, help="most requests per level (default 2000)")
    parser.add_argument("--duration", type=float, default=10.0, help="most seconds per level (default 10)")
    parser.add_argument(
        "--payload",
        choices=("binary", "json", "png"),
        default="binary",
        help="v2 binary tensors (default), v2 JSON tensors, or PNG to /classify",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="the batching-on server's --max-batch-size (default 32)"
    )
    parser.add_argument(
        "--modes", default="on,off", help="batching modes to run when starting the server (default on,off)"
    )
    parser.add_argument("--server-args", default="", help="extra `edgecnn serve` options, space-separated")
    parser.add_argument(
        "--out", type=Path, default=Path("loadtest.json"), help="JSON results file (default loadtest.json)"
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from edgecnn.serve import default_model_name

    name = args.name or default_model_name(args.model)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    results = []
    header = f"{'batching':>8} {'conc':>5} {'requests':>8} {'errors':>6} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'batch':>7}"
    print(header, file=sys.stderr)
    if args.url:
        if urlsplit(args.url).hostname not in LOOPBACK:
            raise SystemExit(f"--url {args.url}: this tool only loads servers on loopback (127.0.0.1, localhost, ::1)")
        for row in sweep(args.url.rstrip("/"), name, args.payload, levels, args.requests, args.duration):
            results.append({"batching": "?", **row})
    else:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            size = args.max_batch_size if mode == "on" else 1
            server = start_server(
                args.model, ["--max-batch-size", str(size), "--name", name, *args.server_args.split()]
            )
            try:
                rows = sweep(server.base, name, args.payload, levels, args.requests, args.duration)
            finally:
                code = server.stop()
            if code != 0:
                print(f"warning: the server exited with {code} after SIGTERM", file=sys.stderr)
            results += [{"batching": mode, "max_batch_size": size, **row} for row in rows]
    print("\n" + header)
    for r in results:
        print(_row(r, r["batching"]))
    report = {"model": str(args.model), "payload": args.payload, "cpu_count": os.cpu_count(), "results": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
