"""What a verified model update costs a live `edgecnn serve --watch` (issue 24).

    .venv/bin/python -m tools.swaptest models/NAME --concurrency 8 --duration 30 --swap-at 10 --runs 3

Copies the export folder MODEL_DIR (its .onnx, .json, .txt and verification.npz files) twice into a
scratch folder: the one served, and the update. Starts `edgecnn serve FOLDER --watch` on a free
loopback port, loads it with --concurrency keep-alive clients (tools/loadtest.py's client, v2 binary
tensors of one image), and --swap-at seconds in publishes the update the way `edgecnn export` does
(edgecnn.files.swap_paths: one atomic folder swap). The update has the same weights in new files,
so the server loads, warms up and verifies it in the background and swaps it in.

Per run it reports:
- steady p99: requests that ended in the 2 s .. --swap-at window (before the update);
- swap p99: requests that started between the publish and 2 s after the first answer of version 2
  (the load and verification compete for the cores; the old version drains);
- time to new: from the publish to the first answer from version 2;
- extra memory: the server's peak RSS in that window minus its median RSS before the publish
  (/proc/PID/status, sampled every 50 ms), and its RSS at the end;
- errors: non-200 answers (there should be none) and answers of an unknown version.
Prints the median over --runs and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from edgecnn.loadgen import Connection, build_requests, get

_VERSION = re.compile(rb'"model_version":"([^"]*)"')
_COPIED = (".onnx", ".json", ".txt", ".npz")


class _Answer(Connection):
    """The load test's connection, also keeping the model_version of each answer."""

    def data_received(self, data):
        if self.waiter is not None:
            found = _VERSION.search(bytes(self.buffer) + data)
            self.version = found.group(1).decode() if found else ""
        super().data_received(data)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _copy_export(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and file.suffix in _COPIED:
            shutil.copy2(file, target / file.name)


async def _run(base: str, name: str, pid: int, concurrency: int, duration: float, swap_at: float, publish) -> dict:
    parts = urlsplit(base)
    host, port = parts.hostname, parts.port
    model = json.loads(get(f"{base}/v2/models/{name}"))
    requests = build_requests(host, port, name, model, "binary")
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(_Answer, host, port))[1] for _ in range(concurrency)]
    for i, conn in enumerate(conns):
        await conn.request(requests[i % len(requests)])
    records, memory = [], []  # (start, end, status, version); (time, MiB)
    start = time.perf_counter()
    deadline = start + duration
    published = []

    async def client(conn, offset):
        i = offset
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                status = await conn.request(requests[i % len(requests)])
            except ConnectionError:
                records.append((t0, time.perf_counter(), 0, ""))
                return
            records.append((t0, time.perf_counter(), status, conn.version))
            i += 1

    async def sampler():
        while time.perf_counter() < deadline:
            memory.append((time.perf_counter(), _rss_mib(pid)))
            await asyncio.sleep(0.05)

    async def swapper():
        await asyncio.sleep(swap_at)
        published.append(time.perf_counter())
        await loop.run_in_executor(None, publish)

    await asyncio.gather(sampler(), swapper(), *(client(c, k) for k, c in enumerate(conns)))
    for conn in conns:
        conn.transport.close()
    t_pub = published[0]
    new = [end for _, end, status, version in records if status == 200 and version == "2"]
    t_new = min(new) if new else float("nan")
    steady = [end - s for s, end, _, _ in records if start + 2 <= end < t_pub]
    window_end = (t_new if new else deadline) + 2
    swap = [end - s for s, end, _, _ in records if t_pub <= s < window_end]
    before = [mib for t, mib in memory if t < t_pub]
    during = [mib for t, mib in memory if t_pub <= t < window_end]
    return {
        "requests": len(records),
        "errors": sum(1 for r in records if r[2] != 200),
        "unknown_version": sum(1 for r in records if r[2] == 200 and r[3] not in ("1", "2")),
        "steady_requests": len(steady),
        "steady_p99_ms": round(float(np.percentile(steady, 99)) * 1000, 2) if steady else None,
        "swap_requests": len(swap),
        "swap_p99_ms": round(float(np.percentile(swap, 99)) * 1000, 2) if swap else None,
        "time_to_new_s": round(t_new - t_pub, 3),
        "rss_before_mib": round(statistics.median(before), 1) if before else None,
        "rss_peak_during_swap_mib": round(max(during), 1) if during else None,
        "rss_end_mib": round(memory[-1][1], 1) if memory else None,
    }


def summarize(runs: list[dict]) -> dict:
    """Medians over the runs; the swap/steady ratio and the extra memory are taken per run first."""
    for r in runs:
        r["swap_over_steady"] = round(r["swap_p99_ms"] / r["steady_p99_ms"], 2)
        r["extra_mib"] = round(r["rss_peak_during_swap_mib"] - r["rss_before_mib"], 1)
        r["kept_after_mib"] = round(r["rss_end_mib"] - r["rss_before_mib"], 1)
    keys = ("steady_p99_ms", "swap_p99_ms", "swap_over_steady", "time_to_new_s", "extra_mib", "kept_after_mib")
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    median["errors"] = sum(r["errors"] + r["unknown_version"] for r in runs)
    median["requests"] = sum(r["requests"] for r in runs)
    return median


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="an export folder (with verification.npz)")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive clients (default 8)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per run (default 30)")
    parser.add_argument("--swap-at", type=float, default=10.0, help="seconds into the load to publish (default 10)")
    parser.add_argument("--watch-interval", type=float, default=1.0, help="the server's --watch-interval (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh server (default 3)")
    parser.add_argument("--server-args", default="", help="extra `edgecnn serve` options, space-separated")
    parser.add_argument("--out", type=Path, default=Path("swaptest.json"), help="JSON results (default swaptest.json)")
    args = parser.parse_args(argv)

    from edgecnn.files import swap_paths
    from edgecnn.launch import ServeProcess

    name = args.model_dir.resolve().name
    runs = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="swaptest-") as scratch:
            served, update = Path(scratch) / name, Path(scratch) / f".{name}.update"
            _copy_export(args.model_dir, served)
            _copy_export(args.model_dir, update)
            server = ServeProcess(
                served,
                ("--watch", "--watch-interval", str(args.watch_interval), *args.server_args.split()),
                stderr=subprocess.PIPE,
            ).start(timeout=300)
            try:
                result = asyncio.run(
                    _run(
                        server.base,
                        name,
                        server.proc.pid,
                        args.concurrency,
                        args.duration,
                        args.swap_at,
                        lambda: swap_paths(update, served),
                    )
                )
            finally:
                code = server.stop()
            said = server.proc.stderr.read().decode(errors="replace")
            line = next((x for x in said.splitlines() if x.startswith(f"serving {name} version 2")), "")
            result["server_line"] = line
            result["exit_code"] = code
            print(json.dumps(result), file=sys.stderr)
            runs.append(result)
    median = summarize(runs)
    report = {
        "model_dir": str(args.model_dir),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "swap_at_s": args.swap_at,
        "watch_interval_s": args.watch_interval,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "runs": runs,
        "median": median,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(median, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
