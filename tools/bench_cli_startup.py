"""Start-up of the command line: `edgecnn --help` and `edgecnn predict` on one image, in fresh
processes, for this checkout and another (e.g. the click version before typer), interleaved, with
the import cost of typer and of click measured in the same run.

python -m tools.bench_cli_startup --before /tmp/edgecnn-click --repeats 15 --json docs/benchmarks/cli_startup.json

--before is a checkout of edgecnn (a git worktree of an older commit); both run with this Python
and its installed packages, each with PYTHONPATH set to its checkout. The model is a tiny linear
ONNX classifier and the image a 16x16 PNG, so the time is the start-up, not the work.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _seconds(argv: list[str], checkout: Path | None) -> float:
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout to compare with")
    parser.add_argument("--repeats", type=int, default=15, help="fresh processes per case (default 15)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    from tests.conftest import make_image_folder, make_linear_onnx

    work = Path(tempfile.mkdtemp(prefix="cli-startup-"))
    model = make_linear_onnx(work / "tiny" / "model.onnx", image_size=(16, 16), channels=3, classes=("a", "b"))
    images = make_image_folder(work / "images", per_class=1)
    image = str(next(images.rglob("*.png")))
    cli = [sys.executable, "-m", "edgecnn.cli"]
    cases = {
        "edgecnn --help": cli + ["--help"],
        "edgecnn predict (1 image)": cli + ["predict", str(model), image, "--device", "cpu", "--format", "json"],
    }
    imports = {
        "import typer": [sys.executable, "-c", "import typer"],
        "import click": [sys.executable, "-c", "import click"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    checkouts = {"now": ROOT, "before": args.before.resolve()}
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every case alike
        for case, argv in cases.items():
            for label, checkout in checkouts.items():
                times.setdefault(f"{case} [{label}]", []).append(_seconds(argv, checkout))
        for case, argv in imports.items():
            times.setdefault(case, []).append(_seconds(argv, None))
    medians = {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}
    typer_cost = medians["import typer"] - medians["python -c pass"]
    result = {
        "command": "python -m tools.bench_cli_startup --before CHECKOUT --repeats " + str(args.repeats),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "python": platform.python_version(),
        "median_ms": medians,
        "typer_import_ms": round(typer_cost, 1),
        "slower_ms": {case: round(medians[f"{case} [now]"] - medians[f"{case} [before]"], 1) for case in cases},
    }
    for key, value in medians.items():
        print(f"{key:40s} {value:8.1f} ms")
    for case, slower in result["slower_ms"].items():
        verdict = "within" if slower <= typer_cost else "MORE than"
        print(f"{case}: {slower:+.1f} ms now vs before, {verdict} typer's own import cost ({typer_cost:.1f} ms)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
