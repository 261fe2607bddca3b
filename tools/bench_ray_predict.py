"""Plain `edgecnn predict` against `predict --ray local` on the same folder of real JPEGs.

Times, --repeats times each, plain `predict` and `predict_on_ray`, alternating which goes first.
Each Ray run is what `edgecnn predict --ray local` does: it starts a local Ray (--cpus CPUs),
runs, and stops it (with --shared-ray: one Ray started before all runs and reused, as a
program that called `ray.init` itself). What each rate counts:

- plain: `PredictResult.images_per_second`, the batch loop only (decoding and inference);
  its listing and model session are outside, as `edgecnn predict` prints it.
- plain, whole call: the same run timed around `predict(...)` (listing and session included).
- ray: timed around `predict_on_ray(...)`: listing, the driver's model check, starting a fresh
  actor pool (a worker per actor, one model session each) and every image, minus Ray's own start
  and stop (`ray.init`, `ray.shutdown`: `connect_seconds` and `disconnect_seconds` in its
  result), which are reported apart. The images the driver ran itself while the actor started
  (`driver_images`; `--no-driver-help` turns that off) are reported too.

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
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
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
        "--shared-ray", action="store_true", help="start one local Ray before all runs instead of one per Ray run"
    )
    parser.add_argument(
        "--no-driver-help",
        action="store_true",
        help="the driver waits for the actors instead of running batches while they start",
    )
    parser.add_argument(
        "--no-session-cache",
        action="store_true",
        help="open every session from the model file (EDGECNN_SESSION_CACHE=off), not from edgecnn's session cache",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.no_session_cache:  # before Ray starts: its workers inherit this environment
        os.environ["EDGECNN_SESSION_CACHE"] = "off"

    # The edgecnn command has imported pydantic before `predict` runs (typer converts option values
    # with it); Ray's first remote call imports it otherwise. Time what the command does.
    import pydantic  # noqa: F401

    import onnxruntime
    import ray

    from edgecnn.images import find_images
    from edgecnn.predict import PredictConfig, predict
    from edgecnn.ray_predict import RayPredictConfig, predict_on_ray, start_local_ray
    from edgecnn.runtime import RunnerConfig

    inputs = (args.images,) if args.times == 1 else tuple(find_images([args.images])[0]) * args.times
    config = PredictConfig(
        model=args.model, inputs=inputs, batch_size=args.batch_size, runner=RunnerConfig(device="cpu")
    )
    ray_start, ray_stop = [], []
    if args.shared_ray:
        started = time.perf_counter()
        start_local_ray(args.cpus)  # as `--ray local` starts it
        ray_start.append(time.perf_counter() - started)
    plain, plain_whole, on_ray, ready, driver, count, layout = [], [], [], [], [], 0, {}
    cache = []  # what edgecnn's session cache did for plain predict's session and the driver's check

    def run_plain():
        started = time.perf_counter()
        result = predict(config)
        plain_whole.append(result.count / (time.perf_counter() - started))
        plain.append(result.images_per_second)
        return result

    def run_ray():
        ray_config = RayPredictConfig(
            config, actors=args.actors, local_cpus=args.cpus, driver_helps=False if args.no_driver_help else None
        )
        started = time.perf_counter()
        result = predict_on_ray(ray_config)
        whole = time.perf_counter() - started
        if not args.shared_ray:
            ray_start.append(result.ray["connect_seconds"])
            ray_stop.append(result.ray["disconnect_seconds"])
        on_ray.append(
            (result.count - result.failed) / (whole - result.ray["connect_seconds"] - result.ray["disconnect_seconds"])
        )
        ready.append(result.ray["actors_ready_seconds"])
        driver.append(result.ray["driver_images"])
        if not args.shared_ray:
            time.sleep(1.0)  # let the stopped Ray's processes finish exiting before the next run
        return result

    try:
        for i in range(args.repeats):
            if i % 2 == 0:
                result, ray_result = run_plain(), run_ray()
            else:
                ray_result, result = run_ray(), run_plain()
            count = result.count
            cache.append(
                {"plain": result.runner.get("session_cache"), "ray_driver": ray_result.runner.get("session_cache")}
            )
            layout = {k: ray_result.ray[k] for k in ("actors", "cpus_per_actor", "images_per_block")}
            assert sorted((r.path, r.label) for r in ray_result.rows) == sorted(
                (r.path, r.label) for r in result.rows
            ), "Ray and plain predict disagree"
            print(
                f"plain {plain[-1]:7.1f} images/s (whole call {plain_whole[-1]:7.1f})   ray {on_ray[-1]:7.1f} images/s "
                f"= {on_ray[-1] / plain[-1]:.2f}x ({on_ray[-1] / plain_whole[-1]:.2f}x of the whole call; "
                f"{layout['actors']} actor(s) x {layout['cpus_per_actor']:g} CPU, ready after {ready[-1]} s; "
                f"{driver[-1]} of {count} images run by the driver; load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        if args.shared_ray:
            started = time.perf_counter()
            ray.shutdown()
            ray_stop.append(time.perf_counter() - started)
    median = {name: statistics.median(v) for name, v in (("plain", plain), ("whole", plain_whole), ("ray", on_ray))}
    out = {
        "model": str(args.model),
        "images": str(args.images),
        "count": count,
        "batch_size": args.batch_size,
        "times": args.times,
        "cpus": args.cpus,
        "ray_layout": layout,
        "plain_images_per_second": round(median["plain"], 1),
        "plain_whole_call_images_per_second": round(median["whole"], 1),
        "ray_images_per_second": round(median["ray"], 1),
        "ray_over_plain": round(median["ray"] / median["plain"], 2),
        "ray_over_plain_whole_call": round(median["ray"] / median["whole"], 2),
        "shared_ray": args.shared_ray,
        "driver_helps": not args.no_driver_help,
        "ray_init_seconds": round(statistics.median(ray_start), 2),
        "ray_shutdown_seconds": round(statistics.median(ray_stop), 2),
        "runs": {
            "plain": [round(v, 1) for v in plain],
            "plain_whole_call": [round(v, 1) for v in plain_whole],
            "ray": [round(v, 1) for v in on_ray],
            "actors_ready_seconds": ready,
            "driver_images": driver,
            "session_cache": cache,
        },
        "ray_over_plain_per_run": round(statistics.median(r / p for r, p in zip(on_ray, plain)), 2),
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
