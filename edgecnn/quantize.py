"""INT8 (static QDQ, calibrated on real images) and FP16 variants of an FP32 ONNX model.

INT8 follows onnxruntime's recipe for CPUs: quantization preprocessing (shape inference and
basic graph optimization), static quantization in QDQ format, per-channel int8 weights and
uint8 activations, `reduce_range` on CPUs without VNNI. Dynamic quantization is never used
for convolutional models: it makes them several times slower on CPU. Over the accuracy budget,
`quantize_within_budget` keeps the layers that measurably hurt most in float, one at a time
(`edgecnn.sensitivity`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.errors import EdgecnnError, require

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Config:
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    reduce_range: bool | None = None  # None: on for CPUs without VNNI (onnxruntime's advice)
    nodes_to_exclude: tuple[str, ...] = ()
    calibration_batch: int = 16


@dataclass
class Int8Attempt:
    """One quantization recipe tried, and what it cost in accuracy."""

    recipe: str
    calibration_method: str
    nodes_in_float: list[str]
    accuracy: float | None = None
    drop_pp: float | None = None
    worst_class: int | None = None  # the class whose recall dropped most (index into the class names)
    worst_class_drop_pp: float | None = None
    accepted: bool = False


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    config: Int8Config = Int8Config(),
    keep_float: Path | None = None,
) -> Path:
    """Statically quantize `fp32_path` to QDQ INT8 at `out_path`.

    calibration: a batch of model inputs (N, ...) in the model's dtype and layout, real
    images preprocessed exactly as at inference. keep_float: also save the float model the
    quantizer started from (after its preprocessing; the INT8 nodes have its node names).
    """
    require("onnx", "train")
    require("sympy", "train")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if config.calibration_method not in CALIBRATION_METHODS:
        raise EdgecnnError(
            f"--calibration-method {config.calibration_method}: choose from {', '.join(CALIBRATION_METHODS)}"
        )
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[config.calibration_method]
    input_name, softmax_nodes, input_path = _graph_facts(fp32_path)

    size = config.calibration_batch
    # onnxruntime's histogram calibrators (entropy, percentile) stack every batch's activations into
    # one array, so their batches must all be the same size: a short last batch is left out there.
    usable = (
        len(calibration)
        if method == CalibrationMethod.MinMax or len(calibration) <= size
        else len(calibration) - len(calibration) % size
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calibration[i : min(i + size, usable)] for i in range(0, usable, size)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    from edgecnn.machine import has_vnni

    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    # The softmax stays in float: quantizing probabilities to 1/256 steps ruins top-k scores.
    # So does the elementwise preprocessing before the first conv: it is cheap in float, and a
    # QLinearAdd that broadcasts a per-channel mean costs 1.8 ms at 224x224 (ResNet50's whole
    # first conv costs 0.8 ms). The first conv's input is quantized once, after it.
    exclude = list(config.nodes_to_exclude) + softmax_nodes + input_path
    with tempfile.TemporaryDirectory(prefix="edgecnn-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if config.calibration_method == "percentile":
            extra["CalibPercentile"] = 99.999
        quantize_static(
            str(pre),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=exclude,
            extra_options=extra,
        )
        if keep_float is not None:
            shutil.move(str(pre), str(keep_float))
    return out_path


MAX_FLOAT_LAYERS = 8  # the most re-quantizations the budget search makes, one more float layer each
SENSITIVITY_IMAGES = 32  # calibration images the per-layer sensitivity is measured on


@dataclass(frozen=True)
class Int8Budget:
    """What INT8 may lose against FP32 on the validation images, in percentage points."""

    baseline_accuracy: float
    max_drop_pp: float
    baseline_recall: tuple[float, ...] = ()  # FP32 recall per class (for max_class_drop_pp)
    max_class_drop_pp: float | None = None  # None: no per-class budget

    def judge(self, attempt: Int8Attempt, accuracy: float, recall) -> Int8Attempt:
        """Fill `attempt` with the accuracy drop, the worst class's recall drop, and whether both hold."""
        attempt.accuracy = accuracy
        attempt.drop_pp = round((self.baseline_accuracy - accuracy) * 100.0, 6)
        ok = attempt.drop_pp <= self.max_drop_pp
        if self.baseline_recall and len(recall) == len(self.baseline_recall):
            drops = (np.asarray(self.baseline_recall) - np.asarray(recall)) * 100.0
            worst = int(np.argmax(drops))
            attempt.worst_class, attempt.worst_class_drop_pp = worst, round(float(drops[worst]), 6)
            if self.max_class_drop_pp is not None:
                ok = ok and attempt.worst_class_drop_pp <= self.max_class_drop_pp
        attempt.accepted = ok
        return attempt

    def describe(self) -> str:
        text = f"budget {self.max_drop_pp:g}"
        if self.max_class_drop_pp is not None:
            text += f", worst class {self.max_class_drop_pp:g}"
        return text


@dataclass
class Int8Result:
    """What `quantize_within_budget` did: the accepted file (or None), every attempt, the ranking."""

    path: Path | None
    attempts: list[Int8Attempt]
    sensitivity: list = field(default_factory=list)  # [LayerSensitivity], most harmful first

    @property
    def accepted(self) -> Int8Attempt | None:
        return next((a for a in self.attempts if a.accepted), None)


def quantize_within_budget(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    evaluate: Callable[[Path], tuple[float, list[float]]],
    budget: Int8Budget,
    config: Int8Config = Int8Config(),
    max_float_layers: int = MAX_FLOAT_LAYERS,
    log=print,
) -> Int8Result:
    """Quantize every layer; if the budget is missed, keep the most harmful layers in float, one at a time.

    `evaluate(path) -> (accuracy, recall per class)` scores a candidate on validation images.
    The layers are ranked once, by `edgecnn.sensitivity.rank_layers` on the calibration images
    (each layer quantized alone); then the 1, 2, ... `max_float_layers` most harmful stay in
    float until `budget` holds: at most `max_float_layers` re-quantizations. The ranking is
    measured (and returned) even when the first try is within budget, for the report.
    """
    from edgecnn.sensitivity import rank_layers

    attempts: list[Int8Attempt] = []
    candidate = out_path.with_name(out_path.name + ".candidate")
    float_copy = out_path.with_name(out_path.name + ".float.onnx")
    try:
        quantize_int8(fp32_path, candidate, calibration, config, keep_float=float_copy)
        first = budget.judge(
            Int8Attempt("all layers quantized", config.calibration_method, list(config.nodes_to_exclude)),
            *evaluate(candidate),
        )
        attempts.append(first)
        log(
            f"int8: measuring each layer's sensitivity on {min(len(calibration), SENSITIVITY_IMAGES)} calibration images"
        )
        _, softmax, input_path = _graph_facts(fp32_path)
        always_float = set(config.nodes_to_exclude) | set(softmax) | set(input_path)
        ranking = [
            s
            for s in rank_layers(float_copy, candidate, calibration[:SENSITIVITY_IMAGES])
            if s.node not in always_float
        ]
        if first.accepted:
            os.replace(candidate, out_path)
            return Int8Result(out_path, attempts, ranking)
        log(_missed(first, budget, "keeping the most sensitive layers in float, one at a time"))
        tries = min(max_float_layers, len(ranking))
        for k in range(1, tries + 1):
            kept = [s.node for s in ranking[:k]]
            cfg = _replace(config, nodes_to_exclude=tuple(config.nodes_to_exclude) + tuple(kept))
            quantize_int8(fp32_path, candidate, calibration, cfg)
            attempt = budget.judge(
                Int8Attempt(
                    f"{k} most sensitive layer{'s' if k > 1 else ''} in float",
                    cfg.calibration_method,
                    list(cfg.nodes_to_exclude),
                ),
                *evaluate(candidate),
            )
            attempts.append(attempt)
            if attempt.accepted:
                os.replace(candidate, out_path)
                return Int8Result(out_path, attempts, ranking)
            log(_missed(attempt, budget, "one more layer in float" if k < tries else "giving up"))
        return Int8Result(None, attempts, ranking)
    finally:
        candidate.unlink(missing_ok=True)
        float_copy.unlink(missing_ok=True)


def _missed(attempt: Int8Attempt, budget: Int8Budget, next_step: str) -> str:
    worst = "" if attempt.worst_class_drop_pp is None else f", worst class {attempt.worst_class_drop_pp:.2f}"
    return (
        f"int8 ({attempt.recipe}): accuracy {attempt.accuracy:.2%} loses {attempt.drop_pp:.2f} points{worst} "
        f"({budget.describe()}); {next_step}"
    )


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """float16 weights and compute, float inputs and outputs kept (for GPUs)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    model16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=["Softmax"])
    onnx.save(model16, str(out_path))
    return out_path


_COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _graph_facts(path: Path) -> tuple[str, list[str], list[str]]:
    """(the input name, the Softmax node names, the input-path node names), from one read.

    The input path is the preprocessing that feeds the first Conv/MatMul/Gemm (in graph
    order): those of its ancestors that read only the graph input, each other and constants,
    such as the cast, the transpose and the mean subtraction. Nodes without a name are left
    out of both lists: onnxruntime's quantizer matches exclusions by name, and an empty name
    would exclude every unnamed node.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = list(graph.node)
    constants = {init.name for init in graph.initializer}
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    first = next((node for node in nodes if node.op_type in _COMPUTE_OPS), None)
    ancestors: set[int] = set()
    pending = [first.input[0]] if first is not None and first.input else []
    while pending:
        i = producer.get(pending.pop())
        if i is not None and i not in ancestors:
            ancestors.add(i)
            pending.extend(nodes[i].input)
    reached = {graph.input[0].name}
    input_path = []
    for i, node in enumerate(nodes):  # ONNX nodes are in topological order
        if i not in ancestors:
            continue
        sources = [name for name in node.input if name and name not in constants]
        if sources and all(name in reached for name in sources):
            reached.update(node.output)
            if node.name:
                input_path.append(node.name)
    softmax = [n.name for n in graph.node if n.op_type == "Softmax" and n.name]
    return graph.input[0].name, softmax, input_path


def _replace(cfg: Int8Config, **changes) -> Int8Config:
    import dataclasses

    return dataclasses.replace(cfg, **changes)
