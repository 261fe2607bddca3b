"""This machine's INT8 limit for a model: onnxruntime's best integer-GEMM rate here x the model's MACs.

No engine built on onnxruntime's CPU kernels can run a network faster than its multiply-accumulates
divided by the fastest rate those kernels reach on this CPU with hot caches. The rate is measured on
single QDQ convolutions of ResNet50's shapes (tools/bench_qlinearconv.py), with both of onnxruntime's
INT8 convolution paths: weight zero point 0 (the symmetric VNNI kernel) and non-zero (im2col + the
integer GEMM, AMX where present); the best shape and path counts. The MACs are counted from the
ONNX graph (Conv, ConvInteger, QLinearConv, MatMul, Gemm) at batch 1.

    python -m tools.int8_limit models/photos-resnet50-224/model.onnx --json docs/benchmarks/int8_limit.json

`tools/bench_peers.py --limit` prints the same limit beside edgecnn and the peers, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from tools.bench_qlinearconv import SHAPES, kernel_microseconds, single_conv

MAC_OPS = ("Conv", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm")


def model_macs(path: Path) -> int:
    """Multiply-accumulates of one image through the model's convolutions and matrix products."""
    import onnx
    from onnx import numpy_helper, shape_inference

    proto = onnx.load(str(path))
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1  # batch 1, so every shape is known
    proto = shape_inference.infer_shapes(proto)
    shapes = {}
    for value in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in proto.graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape)
    total = 0
    for node in proto.graph.node:
        if node.op_type not in MAC_OPS:
            continue
        if node.op_type == "QLinearConv":
            x, w = node.input[0], node.input[3]
        elif node.op_type == "QLinearMatMul":
            x, w = node.input[0], node.input[3]
        else:
            x, w = node.input[0], node.input[1]
        out = shapes.get(node.output[0])
        if out is None or w not in shapes or x not in shapes:
            raise SystemExit(f"{path}: no shape for {node.op_type} {node.name!r}; cannot count its MACs")
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            cin_per_group, kernel = shapes[w][1], int(np.prod(shapes[w][2:]))
            total += int(np.prod(out)) * cin_per_group * kernel
        else:  # (..., M, K) x (K, N) -> (..., M, N)
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            k = shapes[w][-1] if transposed else shapes[w][-2]
            total += int(np.prod(out)) * k
    return total


def peak_gmacs(threads: int, runs: int, log=print) -> dict:
    """The best INT8 convolution rate onnxruntime reaches here, over ResNet50's shapes and both kernels."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecnn-limit-") as traces:
        for weight_zp, path in ((0, "symmetric (VNNI) kernel"), (-1, "im2col + integer GEMM")):
            for cin, cout, k, hw in SHAPES:
                x = np.random.default_rng(1).normal(size=(1, cin, hw, hw)).astype(np.float32)
                us = kernel_microseconds(single_conv(cin, cout, k, hw, weight_zp), x, threads, runs, traces)
                gmacs = cin * cout * k * k * hw * hw / us / 1e3
                rows.append(
                    {"path": path, "kernel": k, "in": cin, "out": cout, "size": hw, "us": us, "gmac_per_s": gmacs}
                )
                log(f"  {path:24s} {k}x{k} {cin:4d}->{cout:<4d} at {hw:2d}x{hw:<2d} {us:8.1f} us {gmacs:6.0f} GMAC/s")
    best = max(rows, key=lambda r: r["gmac_per_s"])
    return {"threads": threads, "runs": runs, "shapes": rows, "best_gmac_per_s": best["gmac_per_s"], "best": best}


def limit(model: Path, threads: int, runs: int = 300, log=print) -> dict:
    """{macs, best_gmac_per_s, limit_ms, ...}: the fastest batch-1 time onnxruntime's kernels allow here."""
    macs = model_macs(model)
    log(f"{model}: {macs / 1e9:.3f} GMAC per image")
    peak = peak_gmacs(threads, runs, log)
    return {"model": str(model), "macs": macs, **peak, "limit_ms": macs / peak["best_gmac_per_s"] / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="an ONNX model (its FP32 or INT8 file: the MACs are the same)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument(
        "--runs", type=int, default=300, help="runs per shape; the first third is warm-up (default 300)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    from edgecnn.machine import physical_cores

    result = limit(args.model, args.threads or physical_cores(), args.runs)
    best = result["best"]
    print(
        f"best: {result['best_gmac_per_s']:.0f} GMAC/s ({best['path']}, {best['kernel']}x{best['kernel']} "
        f"{best['in']}->{best['out']} at {best['size']}) with {result['threads']} threads"
    )
    print(f"INT8 limit for {args.model.name}: {result['limit_ms']:.2f} ms per image at batch 1")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
