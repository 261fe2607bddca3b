"""Soak `edgecnn serve` at about twice its capacity: it must stay up, answer what it accepts within
a bounded p99, refuse the rest with 503 + Retry-After, keep its memory within the stated bound, and
be back at full throughput seconds after the load stops.

    .venv/bin/python -m tools.soak MODEL.onnx                       # 60 s at 2x, binary tensors
    .venv/bin/python -m tools.soak MODEL.onnx --duration 60 --factor 2 --json soak.json

Phases: capacity (closed loop, --capacity-clients connections, 3 s) -> overload (open loop: requests
sent at factor x capacity on a schedule, whatever the answers, on up to --max-clients connections)
-> 1 s pause -> capacity again. The server's RSS is sampled every 0.25 s from /proc; the bound is
`edgecnn.serve.admission.memory_bound` (docs/RELIABILITY.md) over the RSS after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgecnn.loadgen import Connection, build_requests, drive, get
from tools.loadtest import start_server


class _Reply(Connection):
    """The load test's connection, also noting whether each answer carried Retry-After."""

    def data_received(self, data):
        if self.need is None and self.waiter is not None:
            end = (bytes(self.buffer) + data).find(b"\r\n\r\n")
            if end >= 0:
                self.retry_after = b"\nretry-after:" in (bytes(self.buffer) + data)[:end].lower()
        super().data_received(data)


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _overload(
    host: str, port: int, requests: list[bytes], rate: float, duration: float, max_clients: int, pid: int
) -> dict:
    loop = asyncio.get_running_loop()
    idle: list[_Reply] = []
    opened = 0
    answers: dict[str, int] = {
        "200": 0,
        "503 with Retry-After": 0,
        "503 without Retry-After": 0,
        "other": 0,
        "connection errors": 0,
        "not sent (client at --max-clients)": 0,
    }
    latencies: list[float] = []
    samples: list[int] = []
    tasks = set()

    async def one(conn: _Reply, raw: bytes):
        t0 = time.perf_counter()
        try:
            status = await conn.request(raw)
        except ConnectionError:
            answers["connection errors"] += 1
            conn.transport.close()
            return
        if status == 200:
            answers["200"] += 1
            latencies.append(time.perf_counter() - t0)
        elif status == 503:
            answers["503 with Retry-After" if getattr(conn, "retry_after", False) else "503 without Retry-After"] += 1
        else:
            answers["other"] += 1
        idle.append(conn)

    async def sampler():
        while True:
            samples.append(rss(pid))
            await asyncio.sleep(0.25)

    watch = asyncio.ensure_future(sampler())
    start = time.perf_counter()
    k = 0
    while (now := time.perf_counter()) - start < duration:
        due = start + k / rate
        await asyncio.sleep(max(0.0, due - now))  # always yield: the replies are read in this loop too
        if idle:
            conn = idle.pop()
        elif opened < max_clients:
            opened += 1
            try:
                conn = (await loop.create_connection(_Reply, host, port))[1]
            except OSError:
                answers["connection errors"] += 1
                k += 1
                continue
        else:
            answers["not sent (client at --max-clients)"] += 1
            k += 1
            continue
        task = asyncio.ensure_future(one(conn, requests[k % len(requests)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        k += 1
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    watch.cancel()
    for conn in idle:
        conn.transport.close()
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    seconds = time.perf_counter() - start
    return {
        "offered_rps": round(k / seconds, 1),
        "answered_rps": round(answers["200"] / seconds, 1),
        "answers": answers,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_rss": max(samples) if samples else 0,
        "connections_opened": opened,
    }


def soak(
    base: str,
    pid: int,
    name: str,
    payload: str = "binary",
    duration: float = 60.0,
    factor: float = 2.0,
    capacity_clients: int = 8,
    max_clients: int = 200,
    memory_bound: int | None = None,
    capacity_s: float = 3.0,
    recovery_tries: int = 1,
    log=print,
) -> dict:
    """Run the three phases against a running server (process `pid`); returns the figures."""
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    host, port = parts.hostname, parts.port
    model = json.loads(get(f"{base}/v2/models/{name}"))
    requests = build_requests(host, port, name, model, payload)
    asyncio.run(drive(host, port, requests, capacity_clients, 10**9, capacity_s / 3))  # warm-up
    baseline = rss(pid)
    before = asyncio.run(drive(host, port, requests, capacity_clients, 10**9, capacity_s))
    log(
        f"capacity: {before['requests_per_s']:.0f} req/s ({capacity_clients} clients, {capacity_s:g} s, p99 {before['p99_ms']:.1f} ms)"
    )
    rate = factor * before["requests_per_s"]
    over = asyncio.run(_overload(host, port, requests, rate, duration, max_clients, pid))
    log(
        f"overload: offered {over['offered_rps']:.0f} req/s for {duration:.0f} s, answered {over['answered_rps']:.0f} req/s, "
        f"p99 {over['p99_ms']:.1f} ms; {over['answers']}"
    )
    # Recovery: measured 1 s after the load stops, then again each second (up to `recovery_tries`) while
    # below 0.8x capacity, so that another process taking the shared cores for a moment is not read as
    # a server that did not recover; how long it took is reported.
    stopped = time.perf_counter()
    for _ in range(max(1, recovery_tries)):
        time.sleep(1.0)
        after = asyncio.run(drive(host, port, requests, capacity_clients, 10**9, capacity_s))
        if after["requests_per_s"] >= 0.8 * before["requests_per_s"]:
            break
    recovered_after = time.perf_counter() - stopped - capacity_s
    alive = get(f"{base}/v2/health/ready") == b""
    growth = over["max_rss"] - baseline
    result = {
        "capacity_rps": before["requests_per_s"],
        "capacity_p99_ms": before["p99_ms"],
        "factor": factor,
        "duration_s": duration,
        **over,
        "rss_baseline": baseline,
        "rss_growth": growth,
        "memory_bound": memory_bound,
        "recovered_rps": after["requests_per_s"],
        "recovered_ratio": round(after["requests_per_s"] / before["requests_per_s"], 3),
        "recovered_after_s": round(recovered_after, 2),
        "alive": alive,
    }
    log(
        f"memory: RSS {baseline / 2**20:.0f} MiB after warm-up, peak +{growth / 2**20:.1f} MiB"
        + (f" (bound +{memory_bound / 2**20:.0f} MiB)" if memory_bound else "")
    )
    log(
        f"recovery: {after['requests_per_s']:.0f} req/s {recovered_after:.0f} s after the load stopped "
        f"({result['recovered_ratio']:.2f}x capacity); ready: {alive}"
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="the .onnx model to serve (its folder name is the model name)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of overload (default 60)")
    parser.add_argument("--factor", type=float, default=2.0, help="offered rate as a multiple of capacity (default 2)")
    parser.add_argument(
        "--payload", choices=("binary", "json", "png"), default="binary", help="request kind (default binary)"
    )
    parser.add_argument(
        "--server-args",
        default="--threads 1 --max-queue 64",
        help="`edgecnn serve` options (default: --threads 1 --max-queue 64)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    from edgecnn.serve.admission import memory_bound
    from edgecnn.runtime import Runner
    from edgecnn.serve.config import ServeConfig

    extra = args.server_args.split()
    server = start_server(args.model, extra)
    try:
        classes = len(Runner(args.model).metadata.class_names)
        result = soak(
            server.base,
            server.proc.pid,
            args.model.parent.name,
            args.payload,
            args.duration,
            args.factor,
            memory_bound=memory_bound(ServeConfig(), classes),
        )
        result.update(model=str(args.model), server_args=extra, machine_cores=__import__("os").cpu_count())
    finally:
        code = server.stop()
    result["exit_code"] = code
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = (
        result["alive"]
        and code == 0
        and result["rss_growth"] <= result["memory_bound"]
        and result["recovered_ratio"] >= 0.8
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
