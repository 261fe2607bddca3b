"""How long a CPU session takes to open, from the model file and from edgecnn's session cache.

For each model: the first open writes the cache entry (timed: it pays for writing the graph),
then opens from the file (EDGECNN_SESSION_CACHE=off) and from the entry alternate, --repeats
each; medians of `Runner.session_seconds` (onnxruntime's session creation, as every command pays
it), of the whole `Runner(...)` and of its first run (batch 1: a mapped entry reads its weights
in), each open in a fresh process (imports not timed). The entry's answers are checked bit for bit against the file's
on random images. The cache lives in a temporary folder, removed after.

    python -m tools.bench_session_open /tmp/ray-resnet64/model.onnx models/photos-resnet50-224/model.int8.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


OPEN = """
import json, sys, time
import numpy as np
from edgecnn.runtime import Runner, RunnerConfig
started = time.perf_counter()
runner = Runner(sys.argv[1], RunnerConfig(device="cpu"))
whole = time.perf_counter() - started
images = np.zeros(runner.metadata.input_shape(1), runner.numpy_input_dtype)
started = time.perf_counter()
runner.run(images)
first = time.perf_counter() - started
print(json.dumps({"session_seconds": runner.session_seconds, "runner_seconds": whole,
                  "first_run_seconds": first, "state": runner.session_cache}))
"""


def opened(model: Path, cache: str) -> dict:
    """One open in a fresh process, as every command pays it (imports not timed)."""
    env = {**os.environ, "EDGECNN_SESSION_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", OPEN, str(model)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def answers(model: Path, cache: str):
    """The model's answers to four random images, opened from the file ("off") or the cache."""
    import numpy as np

    from edgecnn.runtime import Runner, RunnerConfig

    os.environ["EDGECNN_SESSION_CACHE"] = cache
    runner = Runner(model, RunnerConfig(device="cpu"))
    images = np.random.default_rng(0).integers(0, 256, runner.metadata.input_shape(4))
    return runner.run(images.astype(runner.numpy_input_dtype))


def measure(model: Path, repeats: int) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        first = opened(model, folder)
        assert first["state"] == "written", first["state"]
        times: dict[str, list[tuple[float, float, float]]] = {"file": [], "cache": []}
        for i in range(repeats):
            for mode in ("file", "cache") if i % 2 == 0 else ("cache", "file"):
                run = opened(model, "off" if mode == "file" else folder)
                assert run["state"] == ("off" if mode == "file" else "hit"), run["state"]
                times[mode].append((run["session_seconds"], run["runner_seconds"], run["first_run_seconds"]))
        same = bool(np.array_equal(answers(model, "off"), answers(model, folder)))
        entry_bytes = sum(p.stat().st_size for p in Path(folder).glob("*.onnx"))
    median = {
        mode: {
            "session_seconds": round(statistics.median(r[0] for r in runs), 4),
            "runner_seconds": round(statistics.median(r[1] for r in runs), 4),
            "first_run_seconds": round(statistics.median(r[2] for r in runs), 4),
            "open_and_first_run_seconds": round(statistics.median(r[1] + r[2] for r in runs), 4),
        }
        for mode, runs in times.items()
    }
    return {
        "model": str(model),
        "model_bytes": model.stat().st_size,
        "entry_bytes": entry_bytes,
        "first_open_writing_the_entry": {
            "session_seconds": round(first["session_seconds"], 4),
            "runner_seconds": round(first["runner_seconds"], 4),
        },
        "from_the_file": median["file"],
        "from_the_cache": median["cache"],
        "cache_over_file": round(median["cache"]["session_seconds"] / median["file"]["session_seconds"], 2),
        "same_answers": same,
        "runs": {mode: [[round(v, 4) for v in r] for r in runs] for mode, runs in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help=".onnx models with edgecnn metadata")
    parser.add_argument("--repeats", type=int, default=9, help="opens of each kind (default 9)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    import onnxruntime

    from edgecnn.machine import cpuinfo

    results = [measure(model, args.repeats) for model in args.models]
    for r in results:
        print(
            f"{r['model']}: session {r['from_the_file']['session_seconds']:.3f} s from the file, "
            f"{r['from_the_cache']['session_seconds']:.3f} s from the cache ({r['cache_over_file']:.2f}x); "
            f"open + first run {r['from_the_file']['open_and_first_run_seconds']:.3f} s vs "
            f"{r['from_the_cache']['open_and_first_run_seconds']:.3f} s ("
            f"first open writing it {r['first_open_writing_the_entry']['session_seconds']:.3f} s; "
            f"same answers: {r['same_answers']})"
        )
    out = {
        "results": results,
        "machine": {
            "cpu": cpuinfo()[0],
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
