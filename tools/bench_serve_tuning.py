"""Tuned serving settings against the defaults, measured in the same run (`edgecnn tune --serve`).

For each model folder and each client count: run `edgecnn tune MODEL_DIR` first where the folder
has no deploy.json, then `tune --serve --clients N`, then measure the defaults and the chosen
settings --repeats times each, alternating (so drift in the machine hits both), every run a fresh
`edgecnn serve` on loopback driven by `edgecnn.loadgen` for --duration seconds. Prints the median
requests/s and p99 of each, and the ratio; writes --json.

    python -m tools.bench_serve_tuning models/digits models/photos-resnet50-224 --clients 8,32 \\
        --json docs/benchmarks/serve_tuning.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", type=Path, nargs="+", help="exported model folders (tuned or not)")
    parser.add_argument("--clients", default="8,32", help="comma-separated client counts (default 8,32)")
    parser.add_argument(
        "--time-budget", type=float, default=120.0, help="tune --serve's budget in seconds (default 120)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each side after tuning (default 3)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per measurement (default 8)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    import onnxruntime

    from edgecnn.machine import machine_info
    from edgecnn.tune import TuneConfig, tune
    from edgecnn.tune_serve import ServeTuneConfig, measure_serving, serve_options, tune_serve
    from edgecnn.tuned_config import DEPLOY_FILE

    rows = []
    for model_dir in args.model_dirs:
        if not (model_dir / DEPLOY_FILE).is_file():
            print(f"{model_dir}: tuning how the model runs first", file=sys.stderr)
            tune(TuneConfig(str(model_dir), time_budget_s=args.time_budget))
        for clients in [int(c) for c in args.clients.split(",") if c.strip()]:
            print(f"{model_dir}: tune --serve --clients {clients}", file=sys.stderr, flush=True)
            result = tune_serve(ServeTuneConfig(str(model_dir), clients=clients, time_budget_s=args.time_budget))
            sides = {"defaults": [], "tuned": []}
            both = (
                ("defaults", serve_options(result.default.setting)),
                ("tuned", serve_options(result.chosen.setting)),
            )
            for _ in range(args.repeats):
                for side, options in both:
                    sides[side].append(measure_serving(model_dir, options, clients, args.duration))
            row = {
                "model": model_dir.name,
                "clients": clients,
                "chosen": result.chosen.setting.label(),
                "default": result.default.setting.label(),
                # tune kept the defaults: both sides run the same setting, and their difference is run-to-run noise
                "kept_defaults": result.chosen.setting == result.default.setting,
                "tune_seconds": result.seconds,
                "trials": len(result.trials),
            }
            for side, runs in sides.items():
                row[side] = {
                    "requests_per_s": statistics.median(r.requests_per_s for r in runs),
                    "p50_ms": statistics.median(r.p50_ms for r in runs),
                    "p99_ms": statistics.median(r.p99_ms for r in runs),
                    "errors": sum(r.errors for r in runs),
                    "runs": [r.to_dict() for r in runs],
                }
            row["throughput_ratio"] = row["tuned"]["requests_per_s"] / row["defaults"]["requests_per_s"]
            row["p99_ratio"] = row["tuned"]["p99_ms"] / row["defaults"]["p99_ms"]
            rows.append(row)
            print(
                f"{row['model']:28s} {clients:3d} clients  defaults {row['defaults']['requests_per_s']:8.1f} req/s "
                f"p99 {row['defaults']['p99_ms']:7.2f} ms | tuned ({row['chosen']}) {row['tuned']['requests_per_s']:8.1f} "
                f"req/s p99 {row['tuned']['p99_ms']:7.2f} ms | x{row['throughput_ratio']:.2f} throughput, "
                f"x{row['p99_ratio']:.2f} p99"
                + (" (tune kept the defaults: the same setting twice)" if row["kept_defaults"] else ""),
                flush=True,
            )
    if args.json:
        info = machine_info()
        report = {
            "machine": {k: info[k] for k in ("cpu_model", "cpu_flags", "physical_cores", "memory_gb")},
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "repeats": args.repeats,
            "duration_s": args.duration,
            "time_budget_s": args.time_budget,
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
