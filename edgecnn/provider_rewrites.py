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
- **space-to-depth stem** (onnxruntime's CPU provider): a stride-s convolution over few channels
  (ResNet50's 7x7 stride-2 convolution of the 3 colour channels: 0.5 ms of 6.6 at 224x224 on a
  2-core AVX-512 CPU) equals a stride-1 convolution with a ceil(k/s) kernel over an s*s times
  deeper copy of its input, whose pixel blocks became channels. Over 12 channels the integer
  kernels run it about twice as fast; the copy is a Pad, strided Slices and a Concat on the
  quantized tensor.
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
from edgecnn.export_rewrites import GraphIndex, attribute, set_ints
from edgecnn.registry import Registry

STEM_CHANNELS = 4  # space-to-depth stems: at most this many input channels (where im2col is thin)


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
    bypassed: set[int] = set()  # DequantizeLinear nodes some convolution no longer reads
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
            nodes.append(_dequantized_like(dq, base, f"{base}_dq"))
            shared[key] = f"{base}_dq"
        node.input[0] = shared[key]
        bypassed.add(id(dq))
        for attr in node.attribute:
            if attr.name == "strides":
                attr.ints[:] = [1] * len(attr.ints)
        nodes.append(node)
        done += 1
    _set_nodes(graph, nodes, bypassed)
    return done


def space_to_depth_stems(proto) -> int:
    """Rewrite, in place, every strided convolution over few channels (a network's stem: ResNet50's
    7x7 stride-2 convolution of the 3 colour channels) whose input comes from a per-tensor
    DequantizeLinear, as a stride-1 convolution over a space-to-depth copy of its input.

    With stride s, input pixel (s*i + u, s*j + v) of channel c becomes pixel (i, j) of channel
    (u, v, c) of an s*s times deeper, s times smaller image, so the k x k kernel becomes a
    ceil(k/s) x ceil(k/s) kernel over s*s*C channels whose extra taps are the weights' zero point
    (0 once dequantized). The padding moves into a `Pad` with the input's zero point, and the
    rearrangement (`_space_to_depth_nodes`) works on the quantized tensor before its
    DequantizeLinear. The same integer products are summed, so where the convolution runs as an
    integer one (onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv)
    the answers are the same bit for bit; a float Conv would sum in another order (float rounding),
    so only convolutions whose one reader is a QuantizeLinear are rewritten. The stem then runs
    over 12 channels (or more) instead of 3, which onnxruntime's integer kernels handle far
    better. Skipped: kernels that are not square, and sizes whose last window ends before the
    image does by more than the end padding (that would need cropping). Returns how many
    convolutions changed."""
    from edgecnn.export_rewrites import static_shapes

    graph = proto.graph
    index = GraphIndex(graph)
    shapes = None
    nodes = []
    replaced: set[int] = set()  # the input DequantizeLinear nodes of rewritten convolutions
    done = 0
    for node in graph.node:
        plan = None
        if node.op_type == "Conv" and len(node.input) >= 2 and node.input[0] not in index.pinned:
            shapes = static_shapes(proto) if shapes is None else shapes
            plan = _stem_plan(node, index, shapes)
        if plan is None:
            nodes.append(node)
            continue
        dq, w_dq, (c, h, w), s, k2, pads = plan
        replaced.add(id(dq))
        base = f"{node.name or node.output[0]}__edgecnn_s2d"
        hs, ws = (h + pads[0] + pads[2]) // s, (w + pads[1] + pads[3]) // s
        nodes += _space_to_depth_nodes(graph, dq.input[0], dq.input[2], base, c, s, pads, hs, ws)
        nodes.append(_dequantized_like(dq, f"{base}_q", f"{base}_dq"))
        _deepen_weights(index, w_dq, s, k2)
        node.input[0] = f"{base}_dq"
        for name, values in (("strides", [1, 1]), ("pads", [0, 0, 0, 0]), ("kernel_shape", [k2, k2])):
            set_ints(node, name, values)
        for attr in [a for a in node.attribute if a.name == "auto_pad"]:  # VALID: the pads say it now
            node.attribute.remove(attr)
        nodes.append(node)
        done += 1
    if done:
        _set_nodes(graph, nodes, replaced, kept=index.pinned)
    return done


def _space_to_depth_nodes(graph, quantized: str, zero_point: str, base: str, c, s, pads, hs, ws) -> list:
    """Nodes writing `{base}_q`: the NCHW tensor `quantized`, padded with `zero_point` by `pads`
    and rearranged s x s pixels into channels (channel (u*s + v)*c + ch holds pixel (u, v) of each
    block of channel ch). The work happens channels-last, where each row parity is one strided
    Slice and a free Reshape, and the two Transposes around it cancel against the ones onnxruntime
    puts around its channels-last integer convolutions."""
    from onnx import helper, numpy_helper

    made: set[str] = set()

    def const(suffix, values):
        if suffix not in made:
            made.add(suffix)
            graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), f"{base}_{suffix}"))
        return f"{base}_{suffix}"

    pad_ends = [0, pads[0], pads[1], 0, 0, pads[2], pads[3], 0]
    nodes = [
        helper.make_node("Transpose", [quantized], [f"{base}_nhwc"], name=f"{base}_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node(
            "Pad", [f"{base}_nhwc", const("pads", pad_ends), zero_point], [f"{base}_pad"], name=f"{base}_pad"
        ),
    ]
    rows = []
    row_shape = const("row_shape", [0, hs, ws, s * c])
    for u in range(s):
        sliced = f"{base}_rows{u}"
        nodes.append(
            helper.make_node(
                "Slice",
                [
                    f"{base}_pad",
                    const(f"start{u}", [u]),
                    const(f"end{u}", [np.iinfo(np.int64).max]),
                    const("axis", [1]),
                    const("step", [s]),
                ],
                [sliced],
                name=sliced,
            )
        )
        nodes.append(helper.make_node("Reshape", [sliced, row_shape], [f"{sliced}_deep"], name=f"{sliced}_deep"))
        rows.append(f"{sliced}_deep")
    nodes.append(helper.make_node("Concat", rows, [f"{base}_deep"], name=f"{base}_deep", axis=3))
    nodes.append(helper.make_node("Transpose", [f"{base}_deep"], [f"{base}_q"], name=f"{base}_nchw", perm=[0, 3, 1, 2]))
    return nodes


def _stem_plan(conv, index: GraphIndex, shapes: dict):
    """What `space_to_depth_stems` needs to rewrite `conv`, or None where it does not apply."""
    dq, w_dq = index.producers.get(conv.input[0]), index.producers.get(conv.input[1])
    if dq is None or w_dq is None or dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        return None
    if len(dq.input) < 3 or any(index.constants.get(name) is None for name in dq.input[1:3]):
        return None
    if any(np.prod(index.constants[name].dims, dtype=np.int64) != 1 for name in dq.input[1:3]):
        return None  # a per-channel input scale would need reordering too
    weights = index.constants.get(w_dq.input[0])
    if weights is None or len(weights.dims) != 4 or index.only_user(w_dq.output[0]) is not conv:
        return None
    if index.only_user(w_dq.input[0]) is not w_dq:  # the weights change: nothing else may read them
        return None
    reader = index.only_user(conv.output[0])
    if reader is None or reader.op_type != "QuantizeLinear":  # only an integer convolution stays exact
        return None
    if len(w_dq.input) >= 3 and w_dq.input[2] not in index.constants:
        return None
    if attribute(w_dq, "axis", 1) not in (0, -4) and any(
        np.prod(index.constants[name].dims, dtype=np.int64) != 1 for name in w_dq.input[1:] if name in index.constants
    ):
        return None
    out_channels, channels, kh, kw = weights.dims
    strides = list(attribute(conv, "strides", [1, 1]) or [1, 1])
    if attribute(conv, "group", 1) != 1 or kh != kw or len(strides) != 2 or strides[0] != strides[1] or strides[0] < 2:
        return None
    if channels > STEM_CHANNELS or any(d != 1 for d in attribute(conv, "dilations", [1, 1])):
        return None
    if attribute(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    shape = shapes.get(dq.input[0]) or shapes.get(dq.output[0]) or []
    if len(shape) != 4 or not all(shape[1:]) or shape[1] != channels:
        return None
    s, (c, h, w) = strides[0], shape[1:]
    k2 = -(-kh // s)
    pads = list(attribute(conv, "pads", [0, 0, 0, 0]) or [0, 0, 0, 0])
    # Pad the end so that the deeper image yields exactly the original output size.
    out_h, out_w = (h + pads[0] + pads[2] - kh) // s + 1, (w + pads[1] + pads[3] - kw) // s + 1
    pads[2], pads[3] = s * (out_h - 1 + k2) - h - pads[0], s * (out_w - 1 + k2) - w - pads[1]
    if min(pads) < 0:
        return None
    return dq, w_dq, (c, h, w), s, k2, pads


def _deepen_weights(index: GraphIndex, w_dq, s: int, k2: int) -> None:
    """Rearrange the (quantized) weights of a stem convolution for `space_to_depth_stems`: tap
    (s*a + u, s*b + v) of channel c becomes tap (a, b) of channel (u, v, c); new taps are the
    weights' zero point, so they dequantize to exactly 0."""
    from onnx import numpy_helper

    w = numpy_helper.to_array(index.constants[w_dq.input[0]])
    out_channels, channels, kh, kw = w.shape
    if len(w_dq.input) >= 3:
        zero_point = numpy_helper.to_array(index.constants[w_dq.input[2]]).astype(w.dtype).reshape(-1)
    else:
        zero_point = np.zeros(1, w.dtype)
    full = np.empty((out_channels, channels, s * k2, s * k2), w.dtype)
    full[...] = zero_point.reshape(-1, 1, 1, 1)  # per output channel, or one for all
    full[:, :, :kh, :kw] = w
    deep = full.reshape(out_channels, channels, k2, s, k2, s).transpose(0, 3, 5, 1, 2, 4)
    deep = np.ascontiguousarray(deep.reshape(out_channels, channels * s * s, k2, k2))
    old = index.constants[w_dq.input[0]]
    old.CopyFrom(numpy_helper.from_array(deep, old.name))  # its only reader is w_dq


def _dequantized_like(dq, quantized: str, name: str):
    """A DequantizeLinear of `quantized` with `dq`'s scale, zero point and attributes, writing `name`."""
    from onnx import helper

    node = helper.make_node("DequantizeLinear", [quantized] + list(dq.input[1:]), [name], name=name, domain=dq.domain)
    node.attribute.extend(dq.attribute)
    return node


def _set_nodes(graph, nodes: list, bypassed: set[int], kept: frozenset[str] | set[str] = frozenset()) -> None:
    """Make `nodes` the graph's nodes, less those of `bypassed` (by id: the DequantizeLinear nodes
    a rewrite routed around) whose outputs no node, graph output or `kept` name reads any more."""
    uses = {name for node in nodes for name in node.input} | {out.name for out in graph.output} | set(kept)
    nodes = [n for n in nodes if id(n) not in bypassed or any(o in uses for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)


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
    "s2d",
    Rewrite(
        "s2d",
        "space-to-depth stem",
        ("cpu",),
        space_to_depth_stems,
        "no quantized strided convolution over a few channels (a stem) to rewrite",
        ("x86_64", "aarch64"),
        "any CPU onnxruntime's integer kernels run on (a convolution over 3 channels is too thin for them on each)",
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
