"""Load test for `edgecnn serve`: throughput and latency vs. concurrency, batching on vs. off.

    .venv/bin/python -m tools.loadtest models/digits/model.int8.onnx
    .venv/bin/python -m tools.loadtest MODEL --concurrency 1,4,16,64 --requests 3000 --duration 10 \
        --payload binary --out loadtest.json
    .venv/bin/python -m tools.loadtest MODEL --url http://127.0.0.1:8000   # a server you started

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
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit


from edgecnn.loadgen import LOOPBACK, run_load


def start_server(model: Path, extra: list[str]):
    """`edgecnn serve MODEL` on a free loopback port, ready (an `edgecnn.launch.ServeProcess`)."""
    from edgecnn.errors import EdgecnnError
    from edgecnn.launch import ServeProcess

    try:
        return ServeProcess(model, tuple(extra), stderr=subprocess.PIPE).start()
    except EdgecnnError as exc:
        raise SystemExit(str(exc)) from None


def sweep(base: str, name: str, payload: str, levels: list[int], total: int, duration: float) -> list[dict]:
    rows = []
    for level in levels:
        result = run_load(base, name, level, total, duration, payload)
        rows.append({**result.to_dict(), "concurrency": level, "throughput_rps": result.requests_per_s})
        print(_row(rows[-1], "?"), file=sys.stderr)
    return rows


def _row(r: dict, batching: str) -> str:
    return (
        f"{batching:>8} {r['concurrency']:>5} {r['requests']:>8} {r['errors']:>6} {r['throughput_rps']:>9.1f} "
        f"{r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mean_batch_size'] or 0:>7.2f}"
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

    from edgecnn.serve.config import default_model_name

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
