"""Peers measured in the same run: edgecnn (onnxruntime FP32/INT8, tuned) vs OpenVINO vs TensorFlow Lite vs Keras.

The same trained Keras model and the same real images go through:
  edgecnn FP32 and INT8   the exported model.onnx / model.int8.onnx (edgecnn's Runner, CPU provider)
  edgecnn tuned           the configuration `edgecnn tune` chose (MODEL_DIR/deploy.json), when there is one
  OpenVINO EP INT8        model.int8.onnx on onnxruntime's OpenVINO plugin EP (the openvino extra), f32 precision
  OpenVINO native INT8    the same file compiled by the `openvino` package, LATENCY and THROUGHPUT hints
                          (THROUGHPUT: the batch split over OpenVINO's optimal number of async requests)
  TFLite FP32             converted from the same Keras model, XNNPACK (LiteRT interpreter)
  TFLite INT8             full-integer quantization calibrated on the same images, XNNPACK
  Keras                   a compiled tf.function of the model
  edgecnn INT8 + REWRITE  with --rewrites: model.int8.onnx with each exact rewrite `edgecnn tune`
                          tries on the CPU provider here (edgecnn.provider_rewrites), default settings
Model-only latency per image at --batch (default 1): median over --repeats runs of the
median of --iterations calls, rotating --distinct different inputs. Each run of an engine is a
block of its own (interleaving engines call by call lets onnxruntime's spinning threads slow
the others), and the runs go round the engines in turn, so that drift in the machine's speed
hits every engine alike. Prints a table and the ratios, writes --json. Issue 21's target is the
ratio to the best peer (the faster of TFLite INT8 and OpenVINO native LATENCY): printed both as the
ratio of the medians and as the median of the per-round ratios (the two engines ran in the same
round, so the machine's drift between rounds cancels; in the JSON a {median, min, max} record).

    python -m tools.bench_peers models/photos-resnet50-224 data/photos --iterations 30 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def timed_in_turn(engines: dict, iterations: int, repeats: int, warmup: int = 5) -> dict:
    """{name: {"ms", "runs_ms"}}: each engine's median of `repeats` runs, each run the median of
    `iterations` calls; run r of every engine comes before run r + 1 of any, and the order
    rotates, so that no engine always follows the same one."""
    runs: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # each round starts one engine later
            fn, inputs = engines[name]
            for i in range(warmup):
                fn(inputs[i % len(inputs)])
            times = []
            for i in range(iterations):
                x = inputs[i % len(inputs)]
                t = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t)
            runs[name].append(statistics.median(times) * 1000)
    return {name: {"ms": statistics.median(ms), "runs_ms": [round(m, 3) for m in ms]} for name, ms in runs.items()}


PEERS = ("TFLite INT8 (XNNPACK)", "OpenVINO native INT8 LATENCY")  # issue 21's "best peer": the faster of the two


def best_peer(results: dict) -> str | None:
    """The peer engine with the lowest median here (None when neither ran)."""
    ran = [name for name in PEERS if name in results]
    return min(ran, key=lambda name: results[name]["ms"]) if ran else None


def per_round_ratios(runs_ms: list, reference_runs_ms: list) -> dict:
    """Run r of an engine over run r of the reference: the two ran in the same round, so the
    machine's drift between rounds cancels. Median and range over the rounds."""
    ratios = [a / b for a, b in zip(runs_ms, reference_runs_ms)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def rewritten_int8(model_dir: Path, threads: int, batches: list, scratch: Path) -> dict:
    """model.int8.onnx with each exact rewrite `edgecnn tune` would try on the CPU provider here."""
    from edgecnn.provider_rewrites import REWRITES, rewritten_name, write_rewritten
    from edgecnn.runtime import Runner, RunnerConfig

    engines = {}
    for rewrite in REWRITES.values():
        if "cpu" not in rewrite.providers or rewrite.not_here():
            continue
        target = scratch / rewritten_name("model.int8.onnx", rewrite.key)
        if write_rewritten(rewrite, model_dir / "model.int8.onnx", target):
            runner = Runner(target, RunnerConfig(device="cpu", intra_op_threads=threads))
            engines[f"edgecnn INT8 + {rewrite.label}"] = (runner.run, batches)
    return engines


def tflite_models(model, images: np.ndarray, batch: int, threads: int):
    import tensorflow as tf

    import tempfile

    import keras

    h, w, c = images.shape[1:]
    saved = tempfile.mkdtemp(prefix="edgecnn-tflite-")
    archive = keras.export.ExportArchive()  # a SavedModel with frozen-able variables
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([batch, h, w, c], tf.float32)],
    )
    archive.write_out(saved, verbose=False)

    def convert(int8: bool) -> bytes:
        conv = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serve"])
        if int8:

            def representative():
                for i in range(0, min(len(images), 100)):
                    yield [np.repeat(images[i : i + 1], batch, axis=0).astype(np.float32)]

            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return conv.convert()

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    runners = {}
    for name, int8 in (("TFLite FP32 (XNNPACK)", False), ("TFLite INT8 (XNNPACK)", True)):
        interp = Interpreter(model_content=convert(int8), num_threads=threads)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]["index"]
        out = interp.get_output_details()[0]["index"]

        def run(x, interp=interp, inp=inp, out=out):
            interp.set_tensor(inp, x)
            interp.invoke()
            return interp.get_tensor(out)

        runners[name] = run
    return runners


def tuned_and_openvino(model_dir: Path, batches: list, threads: int) -> dict:
    """edgecnn's tuned configuration, the OpenVINO EP and OpenVINO native on the INT8 file, where available."""
    from edgecnn.runtime import Runner, RunnerConfig
    from edgecnn.tuned_config import resolve

    engines = {}
    resolved = resolve(model_dir, RunnerConfig())
    if resolved.tuned:
        runner = Runner(resolved.path, resolved.runner)
        engines[f"edgecnn tuned ({resolved.path.name}, {runner.provider.replace('ExecutionProvider', '')})"] = (
            runner.run,
            batches,
        )
    int8 = model_dir / "model.int8.onnx"
    try:
        runner = Runner(int8, RunnerConfig(device="openvino", intra_op_threads=threads))
        engines["OpenVINO EP INT8 (f32, latency)"] = (runner.run, batches)
    except Exception as exc:  # the extra is optional here
        print(f"skipped the OpenVINO EP: {exc}", file=sys.stderr)
    try:
        import openvino as ov
    except ImportError:
        print("skipped OpenVINO native: pip install openvino", file=sys.stderr)
        return engines
    core = ov.Core()
    files = [("", int8)]
    if resolved.tuned and resolved.path.name != int8.name and resolved.path.name.startswith("model.int8."):
        files.append((f" on {resolved.path.name}", resolved.path))  # OpenVINO given tune's rewritten file too
    for label, path in files:
        for hint in ("LATENCY", "THROUGHPUT"):
            compiled = core.compile_model(
                str(path), "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads}
            )
            if hint == "LATENCY":
                request = compiled.create_infer_request()
                engines[f"OpenVINO native INT8 LATENCY{label}"] = (lambda x, r=request: r.infer([x]), batches)
                continue
            jobs = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
            queue = ov.AsyncInferQueue(compiled, jobs)

            def run(x, queue=queue, jobs=jobs):
                for part in np.array_split(x, min(jobs, len(x))):
                    queue.start_async([part])
                queue.wait_all()

            engines[f"OpenVINO native INT8 THROUGHPUT ({jobs} requests){label}"] = (run, batches)
    engines["_versions"] = {"openvino": ov.get_version()}
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="models/NAME with model.keras, model.onnx, model.int8.onnx")
    parser.add_argument("images", type=Path, help="folder of real images (class subfolders or flat)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--iterations", type=int, default=30, help="calls per run (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the median is reported (default 5)")
    parser.add_argument("--distinct", type=int, default=16, help="different inputs rotated (default 16)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: physical cores)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--no-tensorflow",
        action="store_true",
        help="skip TFLite and Keras (their INT8 calibration at large batches takes many minutes)",
    )
    parser.add_argument(
        "--rewrites",
        action="store_true",
        help="also time model.int8.onnx with each exact CPU rewrite edgecnn tune tries here",
    )
    parser.add_argument(
        "--limit",
        action="store_true",
        help="also measure this machine's INT8 limit (tools/int8_limit.py: best integer-GEMM rate x the model's MACs) "
        "in the same run, and print every engine's ratio to it",
    )
    args = parser.parse_args()

    from edgecnn.images import find_images, load_image
    from edgecnn.runtime import Runner, RunnerConfig, physical_cores
    from edgecnn.train import load_keras_model

    threads = args.threads or physical_cores()
    model, meta, _ = load_keras_model(args.model_dir)
    files, _ = find_images([args.images])
    files = files[:: max(1, len(files) // (args.distinct * args.batch))][: args.distinct * args.batch]
    images = np.stack([load_image(f, meta.image_size, meta.channels) for f in files])
    uint8_batches = [images[i * args.batch : (i + 1) * args.batch] for i in range(len(images) // args.batch)]
    float_batches = [b.astype(np.float32) for b in uint8_batches]

    engines = {}
    for variant, file in (
        ("edgecnn FP32 (onnxruntime)", "model.onnx"),
        ("edgecnn INT8 (onnxruntime)", "model.int8.onnx"),
    ):
        path = args.model_dir / file
        if path.is_file():
            runner = Runner(path, RunnerConfig(device="cpu", intra_op_threads=threads))
            engines[variant] = (runner.run, uint8_batches)
    if args.rewrites:
        import tempfile

        import atexit
        import shutil

        scratch = Path(tempfile.mkdtemp(prefix="edgecnn-bench-rewrites-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        engines.update(rewritten_int8(args.model_dir, threads, uint8_batches, scratch))
    engines.update(tuned_and_openvino(args.model_dir, uint8_batches, threads))
    import tensorflow as tf

    if not args.no_tensorflow:
        for name, fn in tflite_models(model, images, args.batch, threads).items():
            engines[name] = (fn, float_batches)
        keras_fn = tf.function(lambda x: model(x, training=False))  # TensorFlow uses every core (2 here)
        engines["Keras tf.function"] = (lambda x: keras_fn(x).numpy(), float_batches)

    versions = engines.pop("_versions", {})
    results = timed_in_turn(engines, args.iterations, args.repeats)
    for name, r in results.items():
        r["ms_per_image"] = r["ms"] / args.batch
        print(f"{name:44s} {r['ms']:9.2f} ms/batch  {r['ms_per_image']:8.2f} ms/image  runs {r['runs_ms']}", flush=True)

    int8_limit = None
    if args.limit:
        from tools.int8_limit import limit

        print("\nthis machine's INT8 limit (onnxruntime's best integer-GEMM rate x the model's MACs):", flush=True)
        int8_limit = limit(args.model_dir / "model.onnx", threads)
        print(f"limit: {int8_limit['limit_ms']:.2f} ms/image ({int8_limit['best_gmac_per_s']:.0f} GMAC/s)")
    ref_int8 = results.get("TFLite INT8 (XNNPACK)", {}).get("ms")
    ref_keras = results.get("Keras tf.function", {}).get("ms")
    ref_limit = int8_limit["limit_ms"] * args.batch if int8_limit else None
    peer = best_peer(results)
    print()
    print(
        f"{'engine':44s} {'ms/image':>9s} {'x TFLite INT8':>14s} {'x Keras':>8s} {'x INT8 limit':>13s}"
        f" {'x best peer':>12s} {'per round':>10s}"
    )
    for name, r in results.items():
        r["ratio_vs_tflite_int8"] = r["ms"] / ref_int8 if ref_int8 else None
        r["ratio_vs_keras"] = r["ms"] / ref_keras if ref_keras else None
        r["ratio_vs_int8_limit"] = r["ms"] / ref_limit if ref_limit else None
        r["ratio_vs_best_peer"] = r["ms"] / results[peer]["ms"] if peer else None
        r["ratio_vs_best_peer_per_round"] = per_round_ratios(r["runs_ms"], results[peer]["runs_ms"]) if peer else None
        ratios = "".join(
            f" {x:14.2f}" if x else f" {'-':>14s}"
            for x in (r["ratio_vs_tflite_int8"], r["ratio_vs_keras"], r["ratio_vs_int8_limit"])
        )
        if peer:
            ratios += f" {r['ratio_vs_best_peer']:12.2f} {r['ratio_vs_best_peer_per_round']['median']:10.2f}"
        print(f"{name:44s} {r['ms_per_image']:9.2f}{ratios}")
    if int8_limit:
        print(f"{'this machine INT8 limit':44s} {int8_limit['limit_ms']:9.2f}")
    if peer:
        print(
            f"\nbest peer here: {peer}. 'per round': the median over the rounds of (this engine's run / the best "
            "peer's run in the same round), which cancels the machine's drift between rounds."
        )
    import onnxruntime

    report = {
        "model_dir": str(args.model_dir),
        "image_size": list(meta.image_size),
        "batch": args.batch,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "threads": threads,
        "machine": {
            "cpu": _cpu_name(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "onnxruntime": onnxruntime.__version__,
            "tensorflow": tf.__version__,
            **versions,
            "cpu_flags": sorted(f for f in _flags() if f.startswith(("avx512", "amx", "avx_vnni"))),
        },
        "results": results,
        "best_peer": peer,
        "int8_limit": int8_limit,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _flags() -> set:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
