"""Exact rewrites of an INT8 model that move its work to faster kernels of one execution provider.

Each rewrite keeps the model's answers exactly (same quantized arithmetic), but which kernel an
execution provider picks for the result differs, and whether that is faster depends on the CPU.
So `edgecnn tune` tries each one with the providers and on the CPUs named in its entry, and keeps it
only where it measured faster; elsewhere its candidates are listed as skipped, with the reason.
Adding a rewrite = adding one entry to the `REWRITES` registry.

- **zero-point shift** (onnxruntime's CPU provider): a QLinearConv whose int8 weights have zero
  point 0 runs on the VNNI "symmetric" kernel, any other zero point on im2col + the integer GEMM,
  which uses AMX where the CPU has it. Symmetric int8 weights lie in [-127, 127], so storing
  `w - 1` with zero point -1 dequantizes to exactly the same values.
- **strided 1x1 → subsample** (the OpenVINO provider): a 1x1 convolution with stride s and no
  padding reads only every s-th pixel, so it equals a stride-1 1x1 convolution of the input
  subsampled by s. OpenVINO runs strided 1x1 convolutions of a QDQ model in bf16 on AMX CPUs
  (ResNet50's six downsampling convolutions, with reference-kernel conversions around them); the
  rewritten ones run on its INT8 AMX kernel. The subsampling is a `Slice` on the quantized tensor,
  before its `DequantizeLinear`, so the arithmetic is unchanged.

Needs the `onnx` package to edit the graph (`pip install "edgecnn[tune]"`); onnxruntime alone cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.errors import MissingDependency
from edgecnn.export_rewrites import GraphIndex, attribute
from edgecnn.registry import Registry


@dataclass(frozen=True)
class Rewrite:
    key: str  # in file names: model.int8.<key>.onnx
    label: str  # in candidate names and logs
    providers: tuple[str, ...]  # registry keys of the providers it is tried with
    apply: Callable  # (onnx.ModelProto, rewritten in place) -> how many nodes it changed
    nothing: str  # why a model is left alone, for a candidate that cannot use the rewrite
    machines: tuple[str, ...]  # the CPU architectures it is for (platform.machine(), normalized)
    cpus: str  # the same for people: which CPUs, and why there

    def not_here(self, machine: str | None = None) -> str | None:
        """Why this rewrite is not for this CPU, in one sentence; None where it is."""
        machine = cpu_architecture() if machine is None else machine
        if machine in self.machines:
            return None
        return f"the {self.label} rewrite is for {self.cpus}; this CPU is {machine}"


def cpu_architecture() -> str:
    """platform.machine(), with the aliases operating systems use folded: x86_64 or aarch64 (or as is)."""
    import platform

    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def shift_weight_zero_points(proto) -> int:
    """Rewrite, in place, every Conv weight fed by DequantizeLinear(int8 initializer, scale, zero
    point 0) whose values lie in [-127, 127] as `w - 1` with zero point -1. Returns how many."""
    from onnx import numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    index = GraphIndex(proto.graph)
    done = 0
    for conv in proto.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        dq = index.producers.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        w_name, zp_name = dq.input[0], dq.input[2]
        if w_name not in inits or zp_name not in inits or index.uses(w_name) != 1:
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


def subsample_strided_pointwise(proto) -> int:
    """Rewrite, in place, every 1x1 Conv with stride > 1, no padding and no dilation whose input
    comes from DequantizeLinear as Slice(every s-th row and column of the quantized tensor) ->
    DequantizeLinear -> the same Conv with stride 1. Convolutions reading the same tensor with the
    same strides share one Slice. Returns how many convolutions were rewritten."""
    from onnx import helper, numpy_helper

    if _opset(proto) < 10:  # Slice takes steps from opset 10
        return 0
    graph = proto.graph
    producers = GraphIndex(graph).producers
    shared: dict[tuple[str, tuple[int, ...]], str] = {}  # (quantized tensor, strides) -> dequantized subsample
    bypassed: set[str] = set()  # DequantizeLinear nodes some convolution no longer reads
    nodes = []
    done = 0
    for node in graph.node:
        dq = producers.get(node.input[0]) if node.op_type == "Conv" and node.input else None
        strides = _strides_of_pointwise(node) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if strides is None or attribute(dq, "axis", 1) in (2, 3, -1, -2):
            nodes.append(node)
            continue
        key = (dq.input[0], strides)
        if key not in shared:
            base = f"{dq.input[0]}__edgecnn_subsample_{len(shared)}"
            for suffix, values in (
                ("starts", [0, 0]),
                ("ends", [np.iinfo(np.int64).max] * 2),
                ("axes", [2, 3]),
                ("steps", list(strides)),
            ):
                graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), f"{base}_{suffix}"))
            nodes.append(
                helper.make_node(
                    "Slice",
                    [dq.input[0]] + [f"{base}_{s}" for s in ("starts", "ends", "axes", "steps")],
                    [base],
                    name=base,
                )
            )
            new_dq = helper.make_node(
                "DequantizeLinear", [base] + list(dq.input[1:]), [f"{base}_dq"], name=f"{base}_dq", domain=dq.domain
            )
            new_dq.attribute.extend(dq.attribute)
            nodes.append(new_dq)
            shared[key] = f"{base}_dq"
        node.input[0] = shared[key]
        bypassed.add(dq.name or dq.output[0])
        for attr in node.attribute:
            if attr.name == "strides":
                attr.ints[:] = [1] * len(attr.ints)
        nodes.append(node)
        done += 1
    uses = {name for node in nodes for name in node.input} | {out.name for out in graph.output}
    nodes = [n for n in nodes if (n.name or n.output[0]) not in bypassed or any(o in uses for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    return done


def _strides_of_pointwise(conv) -> tuple[int, ...] | None:
    kernel = attribute(conv, "kernel_shape")
    strides = tuple(attribute(conv, "strides", ()) or ())
    if not kernel or list(kernel) != [1, 1] or len(strides) != 2 or max(strides) == 1:
        return None
    if any(attribute(conv, "pads", [0, 0, 0, 0])) or attribute(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if any(d != 1 for d in attribute(conv, "dilations", [1, 1])):
        return None
    return strides


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


REWRITES: Registry[Rewrite] = Registry("rewrite")  # key -> Rewrite, in the order tune tries them
REWRITES.add(
    "shifted",
    Rewrite(
        "shifted",
        "zero-point shift",
        ("cpu",),
        shift_weight_zero_points,
        "no convolution with zero-point-0 int8 weights to rewrite",
        ("x86_64",),
        "x86-64 CPUs (onnxruntime's x86 VNNI and AMX integer kernels; it pays off with AMX)",
    ),
)
REWRITES.add(
    "subsampled",
    Rewrite(
        "subsampled",
        "strided 1x1 subsample",
        ("openvino",),
        subsample_strided_pointwise,
        "no quantized strided 1x1 convolution to rewrite",
        ("x86_64",),
        "x86-64 CPUs (OpenVINO's x86 CPU plugin, which runs strided 1x1 convolutions in bf16 with AMX)",
    ),
)


def rewritten_name(file_name: str, key: str) -> str:
    """Where a rewrite of `file_name` is kept: model.int8.onnx -> model.int8.<key>.onnx."""
    return f"{Path(file_name).stem}.{key}.onnx"


def write_rewritten(rewrite: Rewrite, src: Path, dst: Path) -> int:
    """Write `rewrite` applied to the INT8 model `src` to `dst` (only when it changed something);
    returns how many nodes it changed."""
    try:
        import onnx
    except ImportError:
        raise MissingDependency(
            f'the {rewrite.label} rewrite needs the onnx package: pip install "edgecnn[tune]"'
        ) from None
    proto = onnx.load(str(src))
    count = rewrite.apply(proto)
    if count:
        onnx.save(proto, str(dst))
    return count
