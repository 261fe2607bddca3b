"""How fast can onnxruntime's INT8 convolution kernel go on this CPU?

Builds single-convolution QDQ models with ResNet50's shapes (3x3 and 1x1, 56x56 down to 7x7),
runs each --runs times with --threads intra-op threads, and reads the QLinearConv kernel time
from onnxruntime's profiler (the median after the first third). Prints microseconds and
GMAC/s per shape and the best rate seen: the ceiling a whole network's convolutions could
reach here, with weights and activations hot in cache. `docs/PERFORMANCE.md` uses it to tell
what the exported graph can still gain from what only faster kernels could.

    python -m tools.bench_qlinearconv --json docs/benchmarks/qlinearconv_peak.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

# (input channels, output channels, kernel, height = width): ResNet50's convolution shapes
SHAPES = (
    (64, 64, 3, 56),
    (128, 128, 3, 28),
    (256, 256, 3, 14),
    (512, 512, 3, 7),
    (64, 256, 1, 56),
    (256, 1024, 1, 14),
    (1024, 256, 1, 14),
    (2048, 512, 1, 7),
)


def single_conv(cin: int, cout: int, k: int, hw: int, weight_zero_point: int = 0):
    """x -> Q -> DQ -> Conv(int8 per-channel weights) -> Relu -> Q -> DQ: one QLinearConv after fusion.
    Weight zero point 0 runs onnxruntime's symmetric (VNNI) kernel, any other im2col + its integer GEMM
    (AMX where the CPU has it)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 127, (cout, cin, k, k), dtype=np.int8), "w_q"),
        numpy_helper.from_array(np.full(cout, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.full(cout, weight_zero_point, np.int8), "w_z"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_s"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_z"),
        numpy_helper.from_array(np.array(0.1, np.float32), "y_s"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], kernel_shape=[k, k], pads=[k // 2] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "y_s", "y_z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def kernel_microseconds(model, x: np.ndarray, threads: int, runs: int, trace_dir: str) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(trace_dir) / "conv")
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"x": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    times = [
        e["dur"]
        for e in events
        if e.get("cat") == "Node"
        and e["name"].endswith("_kernel_time")
        and e.get("args", {}).get("op_name") == "QLinearConv"
    ]
    if not times:
        raise SystemExit("onnxruntime did not fuse the QDQ conv into QLinearConv: nothing to time")
    return statistics.median(times[len(times) // 3 :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument(
        "--runs", type=int, default=300, help="runs per shape; the first third is warm-up (default 300)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecnn-qconv-") as traces:
        for cin, cout, k, hw in SHAPES:
            x = np.random.default_rng(1).normal(size=(1, cin, hw, hw)).astype(np.float32)
            us = kernel_microseconds(single_conv(cin, cout, k, hw), x, args.threads, args.runs, traces)
            macs = cin * cout * k * k * hw * hw
            rows.append({"kernel": k, "in": cin, "out": cout, "size": hw, "us": us, "gmac_per_s": macs / us / 1e3})
            print(
                f"{k}x{k} {cin:5d} -> {cout:5d} at {hw:2d}x{hw:<2d} {us:8.1f} us {rows[-1]['gmac_per_s']:6.0f} GMAC/s",
                flush=True,
            )
    best = max(r["gmac_per_s"] for r in rows)
    print(f"best: {best:.0f} GMAC/s with {args.threads} threads")
    if args.json:
        args.json.write_text(
            json.dumps({"threads": args.threads, "runs": args.runs, "shapes": rows, "best_gmac_per_s": best}, indent=2)
        )


if __name__ == "__main__":
    main()
