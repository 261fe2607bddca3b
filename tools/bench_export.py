"""Benchmark `edgecnn export`: wall time and peak memory of conversion + INT8 calibration + parity.

Runs `edgecnn export MODEL_DIR --quantize int8` --repeats times in fresh processes and reports
the median wall time and the peak resident memory (max over runs, from the kernel's rusage of
the child). With --resize N it first copies MODEL_DIR to MODEL_DIR-N with the same trained
weights at an N x N input (ResNet50 and GAP-headed CNNs are size-agnostic), e.g. to time a
ResNet50 trained at 64x64 at 224x224.

    python -m tools.bench_export models/photos-resnet50 --resize 224 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def resized_copy(model_dir: Path, size: int) -> Path:
    """models/NAME -> models/NAME-SIZE: same weights, input SIZE x SIZE, metadata updated."""
    from edgecnn.files import write_json
    from edgecnn.models import ArchitectureOptions, ModelSpec, build_model
    from edgecnn.train import MODEL_FILE, load_keras_model

    model, meta, record = load_keras_model(model_dir)
    cfg = record["training"]["config"]
    spec = ModelSpec(
        architecture=meta.architecture,
        image_size=(size, size),
        channels=meta.channels,
        num_classes=meta.num_classes,
        options=ArchitectureOptions(weights="none"),
    )
    resized = build_model(spec)
    resized.set_weights(model.get_weights())
    out = model_dir.with_name(f"{model_dir.name}-{size}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    resized.save(out / MODEL_FILE)
    record["model"]["image_size"] = [size, size]
    cfg["image_size"] = [size, size]
    write_json(out / "metadata.json", record)
    shutil.copy(model_dir / "classes.txt", out / "classes.txt")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="trained model folder (models/NAME)")
    parser.add_argument(
        "--resize", type=int, default=None, help="export a copy at this input size (default: as trained)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="export runs; the median time is reported (default 3)")
    parser.add_argument(
        "--export-args", default="--quantize int8", help="arguments for edgecnn export (default: --quantize int8)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    target = resized_copy(args.model_dir, args.resize) if args.resize else args.model_dir
    exe = Path(sys.executable).with_name("edgecnn")
    times, peaks = [], []
    for i in range(args.repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.perf_counter()
        proc = subprocess.run(
            [str(exe), "export", str(target), *args.export_args.split(), "--json"], capture_output=True, text=True
        )
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"export failed: {proc.stderr.strip().splitlines()[-1]}")
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        times.append(elapsed)
        peaks.append(max(peak_kb, before) / 1024 / 1024)
        report = json.loads(proc.stdout)
        print(f"run {i + 1}: {elapsed:.1f} s wall, peak RSS so far {peaks[-1]:.2f} GB", flush=True)
    result = {
        "model_dir": str(target),
        "export_args": args.export_args,
        "runs_s": [round(t, 2) for t in times],
        "median_s": round(statistics.median(times), 2),
        "peak_rss_gb": round(max(peaks), 2),
        "variants": [
            {
                k: v[k]
                for k in (
                    "variant",
                    "accuracy",
                    "keras_agreement",
                    "max_prob_diff",
                    "latency_ms_b1",
                    "latency_ms_bn",
                    "size_bytes",
                )
            }
            for v in report["variants"]
        ],
        "int8_attempts": report["int8_attempts"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
