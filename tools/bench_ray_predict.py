"""Plain `edgecnn predict` against `predict --ray local` on the same folder of real JPEGs.

Starts one local Ray (--cpus CPUs) and times, --repeats times each, plain `predict` and
`predict_on_ray` (a fresh actor pool every run: actor start and one model session per actor
are inside the time, as for a user's run); Ray's own start and stop are timed apart. Medians.

    python tools/make_photo_dataset.py data/photos --per-class 100 --size 256
    python tools/bench_ray_predict.py models/photos-resnet50/model.onnx data/photos --repeats 3 [--times 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
    parser.add_argument("--actors", type=int, default=None, help="Ray actors (default: one per CPU)")
    parser.add_argument(
        "--times",
        type=int,
        default=1,
        help="list the folder's files this many times: a longer run "
        "over the same JPEGs, so the actors' start is a smaller part (default 1)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    import ray

    from edgecnn.predict import PredictConfig, predict
    from edgecnn.ray_predict import RayPredictConfig, predict_on_ray
    from edgecnn.images import find_images
    from edgecnn.runtime import RunnerConfig

    inputs = (args.images,) if args.times == 1 else tuple(find_images([args.images])[0]) * args.times
    config = PredictConfig(
        model=args.model, inputs=inputs, batch_size=args.batch_size, runner=RunnerConfig(device="cpu")
    )
    started = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ray_start = time.perf_counter() - started
    plain, on_ray, count = [], [], 0
    try:
        for _ in range(args.repeats):
            result = predict(config)
            plain.append(result.images_per_second)
            started = time.perf_counter()
            ray_result = predict_on_ray(RayPredictConfig(config, actors=args.actors))
            wall = time.perf_counter() - started
            on_ray.append((ray_result.count - ray_result.failed) / wall)
            count = result.count
            assert sorted((r.path, r.label) for r in ray_result.rows) == sorted(
                (r.path, r.label) for r in result.rows
            ), "Ray and plain predict disagree"
            print(
                f"plain {plain[-1]:8.1f} images/s   ray {on_ray[-1]:8.1f} images/s "
                f"({ray_result.ray['actors']} actors, {count} images)",
                flush=True,
            )
    finally:
        started = time.perf_counter()
        ray.shutdown()
        ray_stop = time.perf_counter() - started
    out = {
        "model": str(args.model),
        "images": str(args.images),
        "count": count,
        "batch_size": args.batch_size,
        "times": args.times,
        "cpus": args.cpus,
        "plain_images_per_second": round(statistics.median(plain), 1),
        "ray_images_per_second": round(statistics.median(on_ray), 1),
        "ray_init_seconds": round(ray_start, 2),
        "ray_shutdown_seconds": round(ray_stop, 2),
        "runs": {"plain": [round(v, 1) for v in plain], "ray": [round(v, 1) for v in on_ray]},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
