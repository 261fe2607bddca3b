"""An exact rewrite of INT8 convolution weights that moves them to another onnxruntime kernel.

onnxruntime's CPU provider runs a quantized convolution whose int8 weights have zero point 0 on
its VNNI "symmetric" kernel, and one with any other zero point on im2col + its integer GEMM,
which uses AMX where the CPU has it. Symmetric int8 weights lie in [-127, 127], so storing
`w - 1` with zero point -1 dequantizes to exactly the same values: same answers, other kernel.
Which kernel is faster depends on the CPU, so `edgecnn tune` measures both and keeps the rewrite
only where it wins.

Needs the `onnx` package to edit the graph (`pip install "edgecnn[tune]"`); onnxruntime alone
cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.errors import MissingDependency

SHIFTED_SUFFIX = ".shifted.onnx"


def shift_weight_zero_points(proto) -> int:
    """Rewrite, in place, every Conv weight fed by DequantizeLinear(int8 initializer, scale, zero
    point 0) whose values lie in [-127, 127] as `w - 1` with zero point -1. Returns how many."""
    from onnx import numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    uses: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producers = {out: node for node in proto.graph.node for out in node.output}
    done = 0
    for conv in proto.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        dq = producers.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        w_name, zp_name = dq.input[0], dq.input[2]
        if w_name not in inits or zp_name not in inits or uses.get(w_name, 0) != 1:
            continue
        w = numpy_helper.to_array(inits[w_name])
        zp = numpy_helper.to_array(inits[zp_name])
        if w.dtype != np.int8 or zp.dtype != np.int8 or np.any(zp != 0) or w.size == 0 or w.min() < -127:
            continue
        shifted_w = numpy_helper.from_array((w.astype(np.int16) - 1).astype(np.int8), w_name)
        inits[w_name].CopyFrom(shifted_w)
        new_zp = f"{zp_name}__edgecnn_shift_{done}"
        proto.graph.initializer.append(numpy_helper.from_array(np.full(zp.shape, -1, np.int8), new_zp))
        dq.input[2] = new_zp
        done += 1
    return done


def write_shifted(src: Path, dst: Path) -> int:
    """Write the rewritten copy of the INT8 model `src` to `dst`; returns the convolutions rewritten."""
    try:
        import onnx
    except ImportError:
        raise MissingDependency('the zero-point rewrite needs the onnx package: pip install "edgecnn[tune]"') from None
    proto = onnx.load(str(src))
    count = shift_weight_zero_points(proto)
    if count:
        onnx.save(proto, str(dst))
    return count
