"""Time from `edgecnn serve MODEL` to a 200 on /v2/health/ready, in fresh processes (loopback only).

python -m tools.bench_startup models/photos-resnet50-224/model.int8.onnx --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def one(model: Path) -> dict:
    from edgecnn.launch import ServeProcess

    server = ServeProcess(model).start(timeout=120)  # its ready_seconds: from the launch to the first 200
    return {"ready_seconds": round(server.ready_seconds, 3), "exit_code": server.stop()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help=".onnx model to serve")
    parser.add_argument("--repeats", type=int, default=5, help="fresh starts (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    runs = [one(args.model) for _ in range(args.repeats)]
    for r in runs:
        print(f"ready after {r['ready_seconds']:.2f} s (exit code {r['exit_code']} on SIGTERM)")
    out = {
        "model": str(args.model),
        "runs": runs,
        "median_ready_seconds": statistics.median(r["ready_seconds"] for r in runs),
    }
    print(f"median: {out['median_ready_seconds']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
