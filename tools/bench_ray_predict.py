"""Plain `edgecnn predict` against `predict --ray local` on the same folder of real JPEGs.

Times, --repeats times each, plain `predict` and `predict_on_ray`, alternating which goes first,
each in a fresh Python process as each `edgecnn predict` command is (--same-process: all in this
one, whose imports are warm after the first run, as a program calling them repeatedly).
Each Ray run is what `edgecnn predict --ray local` does: it starts a local Ray (--cpus CPUs),
runs, and stops it (with --shared-ray: one Ray started before all runs and reused, as a
program that called `ray.init` itself). What each rate counts:

- plain: `PredictResult.images_per_second`, the batch loop only (decoding and inference);
  its listing and model session are outside, as `edgecnn predict` prints it.
- plain, whole call: the same run timed around `predict(...)` (listing and session included).
- ray: timed around `predict_on_ray(...)`: listing, the driver's model check, starting a fresh
  actor pool (a worker per actor, one model session each) and every image, minus Ray's own import,
  start and stop (`import ray` before the timer; `ray.init`, `ray.shutdown`: `connect_seconds` and
  `disconnect_seconds` in its result), which are reported apart.

Sessions open from edgecnn's session cache (edgecnn/session_cache.py) unless --no-session-cache;
the first run of a model writes its entry, as a user's first run does. The process imports
pydantic first, as the `edgecnn` command has by then (typer uses it; Ray's first call would).

The ratio reported is ray / plain (the strict one) and ray / plain whole call, of the medians,
and the median of the runs' own ray / plain.

    python -m tools.make_photo_dataset data/photos --per-class 100 --size 256
    python -m tools.bench_ray_predict models/photos-resnet50/model.onnx data/photos --repeats 3 [--times 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help=".onnx model with edgecnn metadata")
    parser.add_argument("images", type=Path, help="folder of JPEGs")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch, both paths (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; medians reported (default 3)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray (default: all)")
    parser.add_argument("--actors", type=int, default=None, help="Ray actors (default: edgecnn's layout)")
    parser.add_argument(
        "--times",
        type=int,
        default=1,
        help="list the folder's files this many times: a longer run "
        "over the same JPEGs, so the actors' start is a smaller part (default 1)",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run every measurement in this process (after the first, its imports are warm) instead of "
        "each in a fresh one, as each `edgecnn predict` command is",
    )
    parser.add_argument(
        "--shared-ray",
        action="store_true",
        help="start one local Ray before all runs instead of one per Ray run (implies --same-process)",
    )
    parser.add_argument(
        "--no-session-cache",
        action="store_true",
        help="open every session from the model file (EDGECNN_SESSION_CACHE=off), not from edgecnn's session cache",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--one", choices=("plain", "ray"), default=None, help=argparse.SUPPRESS
    )  # a fresh process's run
    args = parser.parse_args(argv)
    args.same_process = args.same_process or args.shared_ray
    return args


def run_once(kind: str, args: argparse.Namespace) -> dict:
    """One measurement in this process: its rates, what Ray reported, and a digest of the labels."""
    from edgecnn.images import find_images
    from edgecnn.predict import PredictConfig, predict
    from edgecnn.ray_predict import RayPredictConfig, predict_on_ray
    from edgecnn.runtime import RunnerConfig

    inputs = (args.images,) if args.times == 1 else tuple(find_images([args.images])[0]) * args.times
    config = PredictConfig(
        model=args.model, inputs=inputs, batch_size=args.batch_size, runner=RunnerConfig(device="cpu")
    )
    started = time.perf_counter()
    if kind == "plain":
        result = predict(config)
        whole = time.perf_counter() - started
        run = {"rate": result.images_per_second, "whole": result.count / whole}
    else:
        ray_config = RayPredictConfig(config, actors=args.actors, local_cpus=args.cpus)
        result = predict_on_ray(ray_config)
        whole = time.perf_counter() - started
        ray = result.ray
        run = {
            "rate": (result.count - result.failed) / (whole - ray["connect_seconds"] - ray["disconnect_seconds"]),
            "connect": ray["connect_seconds"],
            "disconnect": ray["disconnect_seconds"],
            "ready": ray["actors_ready_seconds"],
            "layout": {k: ray[k] for k in ("actors", "cpus_per_actor", "images_per_block")},
        }
    labels = sorted((r.path, r.label) for r in result.rows)
    digest = hashlib.sha256(json.dumps(labels).encode()).hexdigest()
    return {**run, "count": result.count, "cache": result.runner.get("session_cache"), "labels": digest}


def run_fresh(kind: str, argv: list[str]) -> dict:
    """One measurement in a new Python process (as an `edgecnn predict` command runs)."""
    out = subprocess.run(
        [sys.executable, "-m", "tools.bench_ray_predict", *argv, "--one", kind],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    if args.no_session_cache:  # before Ray starts: its workers inherit this environment
        os.environ["EDGECNN_SESSION_CACHE"] = "off"
    # The edgecnn command has imported pydantic before `predict` runs (typer converts option values
    # with it: TypeAdapter); Ray's first remote call imports it otherwise. Time what the command does.
    from pydantic import TypeAdapter  # noqa: F401

    if args.one:
        started = time.perf_counter()
        import ray  # noqa: F401 (Ray's own import, apart from the rate as its start and stop are)

        imported = time.perf_counter() - started
        print(json.dumps({**run_once(args.one, args), "ray_import": imported}))
        return

    import onnxruntime
    import ray

    from edgecnn.ray_predict import start_local_ray

    if args.shared_ray:
        started = time.perf_counter()
        start_local_ray(args.cpus)  # as `--ray local` starts it
        shared_start = time.perf_counter() - started
    runs: dict[str, list[dict]] = {"plain": [], "ray": []}
    try:
        for i in range(args.repeats):
            for kind in ("plain", "ray") if i % 2 == 0 else ("ray", "plain"):
                runs[kind].append(run_once(kind, args) if args.same_process else run_fresh(kind, argv))
                if kind == "ray" and not args.shared_ray:
                    time.sleep(1.0)  # let the stopped Ray's processes finish exiting before the next run
            plain, on_ray = runs["plain"][-1], runs["ray"][-1]
            assert plain["labels"] == on_ray["labels"], "Ray and plain predict disagree"
            print(
                f"plain {plain['rate']:7.1f} images/s (whole call {plain['whole']:7.1f})   ray {on_ray['rate']:7.1f} "
                f"images/s = {on_ray['rate'] / plain['rate']:.2f}x ({on_ray['rate'] / plain['whole']:.2f}x of the "
                f"whole call; {on_ray['layout']['actors']} actor(s) x {on_ray['layout']['cpus_per_actor']:g} CPU, "
                f"ready after {on_ray['ready']} s; "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        if args.shared_ray:
            started = time.perf_counter()
            ray.shutdown()
            shared_stop = time.perf_counter() - started
    plain = [r["rate"] for r in runs["plain"]]
    plain_whole = [r["whole"] for r in runs["plain"]]
    on_ray = [r["rate"] for r in runs["ray"]]
    starts = [shared_start] if args.shared_ray else [r["connect"] for r in runs["ray"]]
    stops = [shared_stop] if args.shared_ray else [r["disconnect"] for r in runs["ray"]]
    median = {name: statistics.median(v) for name, v in (("plain", plain), ("whole", plain_whole), ("ray", on_ray))}
    out = {
        "model": str(args.model),
        "images": str(args.images),
        "count": runs["plain"][-1]["count"],
        "batch_size": args.batch_size,
        "times": args.times,
        "cpus": args.cpus,
        "ray_layout": runs["ray"][-1]["layout"],
        "fresh_processes": not args.same_process,
        "plain_images_per_second": round(median["plain"], 1),
        "plain_whole_call_images_per_second": round(median["whole"], 1),
        "ray_images_per_second": round(median["ray"], 1),
        "ray_over_plain": round(median["ray"] / median["plain"], 2),
        "ray_over_plain_whole_call": round(median["ray"] / median["whole"], 2),
        "ray_over_plain_per_run": round(statistics.median(r / p for r, p in zip(on_ray, plain)), 2),
        "shared_ray": args.shared_ray,
        "ray_init_seconds": round(statistics.median(starts), 2),
        "ray_shutdown_seconds": round(statistics.median(stops), 2),
        "ray_import_seconds": None
        if args.same_process
        else round(statistics.median(r["ray_import"] for r in runs["ray"]), 2),
        "runs": {
            "plain": [round(v, 1) for v in plain],
            "plain_whole_call": [round(v, 1) for v in plain_whole],
            "ray": [round(v, 1) for v in on_ray],
            "actors_ready_seconds": [r["ready"] for r in runs["ray"]],
            "session_cache": [
                {"plain": p["cache"], "ray_driver": r["cache"]} for p, r in zip(runs["plain"], runs["ray"])
            ],
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "ray": ray.__version__,
        },
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
