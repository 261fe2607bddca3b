"""Time from `edgecnn serve MODEL` to a 200 on /v2/health/ready, in fresh processes (loopback only).

    python tools/bench_startup.py models/photos-resnet50-224/model.int8.onnx --repeats 5
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(model: Path) -> dict:
    port = free_port()
    exe = Path(sys.executable).with_name("edgecnn")
    started = time.perf_counter()
    proc = subprocess.Popen([str(exe), "serve", str(model), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"server exited: {proc.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.01)
        ready = time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    return {"ready_seconds": round(ready, 3), "exit_code": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help=".onnx model to serve")
    parser.add_argument("--repeats", type=int, default=5, help="fresh starts (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    runs = [one(args.model) for _ in range(args.repeats)]
    for r in runs:
        print(f"ready after {r['ready_seconds']:.2f} s (exit code {r['exit_code']} on SIGTERM)")
    out = {"model": str(args.model), "runs": runs, "median_ready_seconds": statistics.median(r["ready_seconds"] for r in runs)}
    print(f"median: {out['median_ready_seconds']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
