"""How much each quantized layer of an INT8 model costs on its own, measured on calibration images.

For every node of the QDQ model that reads quantized tensors (a Conv, MatMul, Add, ...), the
float model is run with that node alone quantized: its activation inputs pass through the same
QuantizeLinear/DequantizeLinear pair (scale, zero point) as in the INT8 model, and its weights
and bias are the INT8 model's, dequantized. Everything else stays float. The damage is read at
the model's output against the float model on the same images: the signal-to-quantization-noise
ratio of the probabilities (SQNR, dB; lower is worse, as in onnxruntime's `qdq_loss_debug`) and
top-1 agreement. Errors upstream do not pile onto later layers, so the ranking says which layer to
keep in float first. One onnxruntime session per quantized node; no TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


# Nodes that compute (weights or arithmetic). Data movement (Transpose, Reshape, MaxPool, ...) only passes
# quantized values on: its error is its producer's, and keeping it in float alone changes little.
RANKED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool")


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    sqnr_db: float  # of the model's output with this node alone quantized; lower = more harmful
    agreement: float  # top-1 agreement with the float model on the calibration images

    def to_dict(self) -> dict:
        return asdict(self)


def rank_layers(float_path: Path, int8_path: Path, images: np.ndarray, batch: int = 32) -> list[LayerSensitivity]:
    """Every quantized node of `int8_path` that computes (`RANKED_OPS`), most harmful first (lowest output SQNR).

    float_path: the float model the INT8 one was quantized from, with the same node names (the
    quantizer's preprocessed model); images: model inputs (N, ...), e.g. calibration images.
    """
    import onnx

    float_model = onnx.load(str(float_path))
    qdq = onnx.load(str(int8_path))
    reference = _run(float_model, images, batch)
    op_of = {n.name: n.op_type for n in float_model.graph.node}
    ranked = []
    for node, plan in _quantized_inputs(qdq).items():
        if op_of.get(node) not in RANKED_OPS:
            continue
        single = _with_one_node_quantized(float_model, node, plan)
        if single is None:
            continue
        probs = _run(single, images, batch)
        ranked.append(
            LayerSensitivity(
                node,
                op_of[node],
                sqnr_db(reference, probs),
                float((probs.argmax(-1) == reference.argmax(-1)).mean()),
            )
        )
    return sorted(ranked, key=lambda s: (s.sqnr_db, s.agreement))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10 log10(sum reference^2 / sum (reference - candidate)^2); inf when they are equal."""
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else round(10 * np.log10(signal / noise), 3)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    """DequantizeLinear: (q - zero_point) * scale, per tensor or per channel along `axis`."""
    scale = np.asarray(scale, np.float32)
    zp = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if scale.ndim == 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q.astype(np.float32) - zp) * scale).astype(np.float32)


def _quantized_inputs(qdq) -> dict[str, dict[int, tuple]]:
    """node name -> {input index: ("activation", scale, zp, axis) or ("weight", float array)}
    for the nodes of a QDQ model that read DequantizeLinear outputs."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    producer = {out: n for n in qdq.graph.node for out in n.output}
    plans: dict[str, dict[int, tuple]] = {}
    for node in qdq.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.name:
            continue
        plan = {}
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            scale = inits.get(dq.input[1])
            zp = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
            if scale is None:
                continue
            if dq.input[0] in inits:
                plan[i] = ("weight", dequantize(inits[dq.input[0]], scale, zp, axis))
            else:
                plan[i] = ("activation", scale, zp, axis)
        if plan:
            plans[node.name] = plan
    return plans


def _with_one_node_quantized(float_model, name: str, plan: dict[int, tuple]):
    """A copy of the float model where node `name` reads its inputs quantized as in the QDQ model."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph = model.graph
    index = next((k for k, n in enumerate(graph.node) if n.name == name), None)
    if index is None:
        return None
    node = graph.node[index]
    added = []
    for i, entry in plan.items():
        if i >= len(node.input):
            return None
        tag = f"_edgecnn_sens_{i}"
        if entry[0] == "weight":
            graph.initializer.append(numpy_helper.from_array(entry[1], node.input[i] + tag))
            node.input[i] = node.input[i] + tag
            continue
        _, scale, zp, axis = entry
        scale_name, zp_name = node.input[i] + tag + "_scale", node.input[i] + tag + "_zp"
        graph.initializer.append(numpy_helper.from_array(np.asarray(scale), scale_name))
        inputs = [scale_name]
        if zp is not None:
            graph.initializer.append(numpy_helper.from_array(np.asarray(zp), zp_name))
            inputs.append(zp_name)
        q, dq = node.input[i] + tag + "_q", node.input[i] + tag + "_dq"
        added.append(helper.make_node("QuantizeLinear", [node.input[i], *inputs], [q], axis=axis))
        added.append(helper.make_node("DequantizeLinear", [q, *inputs], [dq], axis=axis))
        node.input[i] = dq
    for k, extra in enumerate(added):
        graph.node.insert(index + k, extra)
    return model


def _run(model, images: np.ndarray, batch: int) -> np.ndarray:
    from edgecnn.ort import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)])
