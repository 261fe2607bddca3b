"""Exact ONNX graph rewrites that onnxruntime's own optimizer leaves undone.

Keras writes explicit zero padding as its own layer (`ZeroPadding2D` in ResNet50 before the
first max pool). tf2onnx turns it into a float `Pad` node. onnxruntime fuses a zero `Pad` into
a following `Conv` but not into a `MaxPool`, and after INT8 quantization the `Pad` sits
between a Dequantize and a Quantize node, where no fusion can reach it. Then the INT8 graph
leaves the integer domain for one float `Pad` plus a DQ/Q pair: about 0.5 ms of ResNet50's
9.5 ms at batch 1 on 2 cores. Folding the `Pad` into the pooling or convolution node's own
`pads` attribute before quantization removes all three.

ResNet50's own preprocessing (RGB to BGR, minus the ImageNet mean) is a fixed 1x1 convolution
in the Keras model. In the INT8 graph that is a QLinearConv with 3 input and 3 output channels
over every pixel, about 0.4 ms at 224x224: the matrix is too thin for the integer kernels.
The channel swap can move into the next convolution's weights instead (permuting its input
channels is exact, zero padding included), which leaves an elementwise Add.

Rewrites here are exact for finite inputs up to float rounding order (Pad folding is bit for
bit; a 1x1 conv turns 0 * inf into NaN where the Add keeps inf); export's parity gate checks the
result against Keras anyway.

`GraphIndex` (who writes and who reads each tensor), `attribute` (a node attribute's value) and
`static_shapes` (what onnx's shape inference knows) serve these rewrites and the INT8 ones in
`edgecnn.provider_rewrites`.
"""

from __future__ import annotations

import numpy as np

_POOLS_AND_CONVS = ("Conv", "MaxPool", "AveragePool")
# Nodes whose outputs are never negative: zero padding before a max pool is then the same as
# the pool's own padding, which ignores padded cells.
_NON_NEGATIVE = ("Relu",)


class GraphIndex:
    """What a graph rewrite needs to know about a graph, read once per pass (here and in
    `edgecnn.provider_rewrites`).

    constants: initializers that are not also graph inputs (those a caller may override);
    producers / consumers: top-level nodes by the tensors they write / read (a node reading a
    tensor twice is listed twice);
    pinned: tensors a rewrite must neither remove nor change: graph outputs, and every name a
    subgraph (If / Loop / Scan body) reads, since the rewrites only look at the top level.
    """

    def __init__(self, graph):
        inputs = {value.name for value in graph.input}
        self.constants = {init.name: init for init in graph.initializer if init.name not in inputs}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.pinned = {value.name for value in graph.output} | _subgraph_reads(graph)

    def uses(self, tensor: str) -> int:
        """How many times top-level nodes read `tensor` (graph outputs and subgraphs not counted)."""
        return len(self.consumers.get(tensor, []))

    def only_user(self, tensor: str):
        """The one node reading `tensor`, or None when it has several readers or is pinned."""
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.pinned else None


def _subgraph_reads(graph) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names.update(name for inner in sub.node for name in inner.input)
                names.update(value.name for value in sub.output)
                names |= _subgraph_reads(sub)
    return names


def attribute(node, name: str, default=None):
    """The value of ONNX node `node`'s attribute `name`, or `default` when it has none: an int, a
    float, a str (decoded), or a list of ints or floats, as the attribute's type says."""
    attr = next((a for a in node.attribute if a.name == name), None)
    if attr is None:
        return default
    from onnx import helper

    value = helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


def simplify(model) -> dict[str, int]:
    """Run every rewrite below on `model` (an `onnx.ModelProto`, in place); counts per rewrite."""
    return {"zero pads folded": fold_zero_pads(model), "channel permutations folded": fold_channel_permutations(model)}


def fold_zero_pads(model) -> int:
    """Fold each 4-D constant-zero spatial `Pad` into the Conv / MaxPool / AveragePool after it.

    `model` is an `onnx.ModelProto`, changed in place. A `Pad` is folded only when the result
    is exactly equal:
      - its mode is constant with value 0, it pads only the two spatial axes (N, C, H, W);
      - its output feeds exactly one node and is not a graph output;
      - that node is a Conv (zero padding is Conv's own), an AveragePool that counts padded
        cells (`count_include_pad=1`), or an undilated MaxPool whose input is non-negative (the
        output of a Relu) with each pad smaller than the kernel, so no window is all padding;
      - that node has `auto_pad` NOTSET (explicit pads);
      - the Pad's constants are initializers a caller cannot override (not graph inputs), and
        no subgraph reads the tensors involved.
    Returns the number of Pad nodes removed.
    """
    graph = model.graph
    index = GraphIndex(graph)

    folded = []
    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        target = index.only_user(pad.output[0])
        if target is None:
            continue
        spatial = _zero_spatial_pads(pad, index.constants)
        if spatial is None or target.op_type not in _POOLS_AND_CONVS or target.input[0] != pad.output[0]:
            continue
        if not _exact_for(target, index.producers.get(pad.input[0]), spatial):
            continue
        set_ints(target, "pads", [a + b for a, b in zip(attribute(target, "pads", [0, 0, 0, 0]), spatial)])
        target.input[0] = pad.input[0]
        folded.append(pad)

    for pad in folded:
        graph.node.remove(pad)
    _drop_unused_initializers(graph, {name for pad in folded for name in pad.input[1:]}, index)
    return len(folded)


def fold_channel_permutations(model) -> int:
    """Turn each 1x1 Conv that only permutes and shifts channels into an Add (and Mul).

    A Conv A with a 1x1 kernel, no padding, stride 1 and one group, whose weights send each
    input channel to exactly one output channel (a permutation times a diagonal), and whose
    output feeds exactly one other Conv B (and is not a graph output), becomes
    `x * scale + bias` in the input's channel order, and B's weights take the permutation on
    their input-channel axis. Zero padding in B commutes with the permutation, so the result
    is the same function. `Mul` is left out when every scale is 1. Returns the count.

    When the image size is known, the constants are stored at full size (C, H, W), not
    (C, 1, 1): onnxruntime turns the Add to NHWC, where a per-channel constant is a stride-3
    broadcast that costs 0.38 ms at 224x224 against 0.03 ms for a same-shape Add (0.6 MB of
    constants for ResNet50, 2.5% of its INT8 file).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    index = GraphIndex(graph)
    constants = index.constants
    shapes = None  # shape inference only once a conv qualifies: most graphs have none

    folded = []
    for conv in [node for node in graph.node if node.op_type == "Conv"]:
        follower = index.only_user(conv.output[0])
        if follower is None or follower.op_type != "Conv" or follower.input[0] != conv.output[0]:
            continue
        affine = _channel_affine(conv, constants)
        if affine is None or follower.input[1] not in constants or index.only_user(follower.input[1]) is None:
            continue
        if attribute(follower, "group", 1) != 1:
            continue
        perm, scale, bias = affine  # output channel o = scale[o] * input[perm[o]] + bias[o]
        inverse = np.argsort(perm)  # input channel i feeds output channel inverse[i]
        weights = numpy_helper.to_array(constants[follower.input[1]])
        constants[follower.input[1]].CopyFrom(numpy_helper.from_array(weights[:, inverse], follower.input[1]))

        shape = (1, len(perm), 1, 1)
        shapes = static_shapes(model) if shapes is None else shapes
        spatial = shapes.get(conv.input[0], [])[2:]
        if (
            len(spatial) == 2
            and all(d > 0 for d in spatial)
            and len(perm) * spatial[0] * spatial[1] <= _FULL_SIZE_LIMIT
        ):
            shape = (1, len(perm), *spatial)
        x, name = conv.input[0], conv.name or conv.output[0]
        replacement = []
        if np.any(scale[inverse] != 1):
            graph.initializer.append(_per_channel(scale[inverse], shape, f"{name}/scale", weights.dtype))
            replacement.append(helper.make_node("Mul", [x, f"{name}/scale"], [f"{name}/scaled"], name=f"{name}/Mul"))
            x = f"{name}/scaled"
        graph.initializer.append(_per_channel(bias[inverse], shape, f"{name}/shift", weights.dtype))
        replacement.append(helper.make_node("Add", [x, f"{name}/shift"], [conv.output[0]], name=f"{name}/Add"))

        at = list(graph.node).index(conv)
        graph.node.remove(conv)
        for offset, node in enumerate(replacement):
            graph.node.insert(at + offset, node)
        folded.append(conv)
    _drop_unused_initializers(graph, {name for conv in folded for name in conv.input[1:]}, index)
    return len(folded)


_FULL_SIZE_LIMIT = 1 << 20  # elements (4 MB of float32): above that, keep (C, 1, 1) constants


def _per_channel(values: np.ndarray, shape: tuple, name: str, dtype):
    """A constant in the model's own float type (float16/32/64), broadcast to `shape`."""
    from onnx import numpy_helper

    full = np.broadcast_to(values.astype(dtype).reshape(1, -1, 1, 1), shape)
    return numpy_helper.from_array(np.ascontiguousarray(full), name)


def static_shapes(model) -> dict[str, list[int]]:
    """Known tensor shapes (unknown dims as 0), from onnx's shape inference."""
    from onnx import shape_inference

    try:
        graph = shape_inference.infer_shapes(model).graph
    except Exception:  # shapes are an optimization here, never a requirement
        return {}
    shapes = {}
    for value in list(graph.value_info) + list(graph.input):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    return shapes


def _channel_affine(conv, constants):
    """(perm, scale, bias) when `conv` is out[o] = scale[o] * in[perm[o]] + bias[o], else None."""
    from onnx import numpy_helper

    if len(conv.input) < 2 or conv.input[1] not in constants:
        return None
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in constants:
        return None
    if attribute(conv, "group", 1) != 1 or attribute(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if any(
        attribute(conv, "pads", [0])
        + [s - 1 for s in attribute(conv, "strides", [1])]
        + [d - 1 for d in attribute(conv, "dilations", [1])]
    ):
        return None
    weights = numpy_helper.to_array(constants[conv.input[1]])
    if weights.ndim != 4 or weights.shape[2:] != (1, 1) or weights.shape[0] != weights.shape[1]:
        return None
    matrix = weights[:, :, 0, 0]
    if np.any(np.count_nonzero(matrix, axis=1) != 1):  # each output reads exactly one input
        return None
    perm = np.argmax(matrix != 0, axis=1)
    if sorted(perm.tolist()) != list(range(len(matrix))):
        return None
    scale = matrix[np.arange(len(matrix)), perm]
    bias = (
        numpy_helper.to_array(constants[conv.input[2]])
        if len(conv.input) > 2 and conv.input[2]
        else np.zeros(len(matrix), np.float32)
    )
    return perm, scale, bias


def _zero_spatial_pads(pad, constants) -> list[int] | None:
    """[h_begin, w_begin, h_end, w_end] when `pad` is a constant-zero pad of H and W only."""
    from onnx import numpy_helper

    if attribute(pad, "mode", "constant") != "constant":
        return None
    inputs = list(pad.input) + [""] * 4
    if inputs[3]:  # opset 18 `axes`: keep the rewrite simple and skip it
        return None
    if inputs[2]:
        if inputs[2] not in constants or np.any(numpy_helper.to_array(constants[inputs[2]]) != 0):
            return None
    if len(pad.input) == 1:  # opset < 11: pads and value are attributes
        pads = attribute(pad, "pads", None)
        if pads is None or attribute(pad, "value", 0.0) != 0:
            return None
    elif pad.input[1] in constants:
        pads = numpy_helper.to_array(constants[pad.input[1]]).astype(int).tolist()
    else:
        return None
    if len(pads) != 8 or min(pads) < 0:
        return None
    n_b, c_b, h_b, w_b, n_e, c_e, h_e, w_e = pads
    if n_b or c_b or n_e or c_e:
        return None
    return [h_b, w_b, h_e, w_e]


def _exact_for(target, producer, spatial: list[int]) -> bool:
    if attribute(target, "auto_pad", "NOTSET") != "NOTSET":
        return False
    if target.op_type == "Conv":
        return True
    if target.op_type == "AveragePool":
        return attribute(target, "count_include_pad", 0) == 1
    # MaxPool
    kernel = attribute(target, "kernel_shape", [])
    if producer is None or producer.op_type not in _NON_NEGATIVE or len(kernel) != 2:
        return False
    if attribute(target, "ceil_mode", 0) != 0 or len(target.output) > 1:  # no Indices output
        return False
    if any(d != 1 for d in attribute(target, "dilations", [1, 1])):  # a dilated window can skip the image
        return False
    total = [a + b for a, b in zip(attribute(target, "pads", [0, 0, 0, 0]), spatial)]
    return all(total[i] < kernel[i % 2] for i in range(4))


def _drop_unused_initializers(graph, candidates: set[str], index: GraphIndex) -> None:
    """Remove those of `candidates` (the removed nodes' constants) that no node reads any more.

    `index.pinned` (read before the pass) keeps what subgraphs read and graph outputs.
    """
    used = {name for node in graph.node for name in node.input} | index.pinned
    keep = [init for init in graph.initializer if init.name in used or init.name not in candidates]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def set_ints(node, name, values) -> None:
    from onnx import helper

    attr = next((a for a in node.attribute if a.name == name), None)
    if attr is not None:
        node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(name, values))
