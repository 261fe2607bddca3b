"""INT8 (static QDQ, calibrated on real images) and FP16 variants of an FP32 ONNX model.

INT8 follows onnxruntime's recipe for CPUs: quantization preprocessing (shape inference and
basic graph optimization), static quantization in QDQ format, per-channel int8 weights and
uint8 activations, `reduce_range` on CPUs without VNNI. Dynamic quantization is never used
for convolutional models: it makes them several times slower on CPU.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
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
    accepted: bool = False


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, config: Int8Config = Int8Config()) -> Path:
    """Statically quantize `fp32_path` to QDQ INT8 at `out_path`.

    calibration: a batch of model inputs (N, ...) in the model's dtype and layout, real
    images preprocessed exactly as at inference.
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
    return out_path


def edge_nodes(fp32_path: Path) -> list[str]:
    """Names of the first convolution and the last MatMul/Gemm (classifier): the usual float keepers."""
    import onnx

    model = onnx.load(str(fp32_path), load_external_data=False)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    heads = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    return ([convs[0]] if convs else []) + ([heads[-1]] if heads else [])


def quantize_within_budget(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    evaluate: Callable[[Path], float],
    baseline_accuracy: float,
    max_drop_pp: float,
    config: Int8Config = Int8Config(),
    log=print,
) -> tuple[Path | None, list[Int8Attempt]]:
    """Quantize, and if accuracy drops more than `max_drop_pp` points, try the obvious fixes.

    Recipes in order: as configured; the first convolution and the classifier kept in float;
    then the same with each other calibration method. `evaluate(path) -> accuracy` scores a
    candidate. Returns (path of the first recipe within budget or None, every attempt).
    """
    edges = edge_nodes(fp32_path)
    recipes: list[tuple[str, Int8Config]] = [("plain", config)]
    if edges:
        recipes.append(
            (
                "first conv + classifier in float",
                _replace(config, nodes_to_exclude=tuple(config.nodes_to_exclude) + tuple(edges)),
            )
        )
    for method in CALIBRATION_METHODS:
        if method != config.calibration_method:
            recipes.append(
                (
                    f"{method} calibration, first conv + classifier in float",
                    _replace(
                        config,
                        calibration_method=method,
                        nodes_to_exclude=tuple(config.nodes_to_exclude) + tuple(edges),
                    ),
                )
            )
    attempts: list[Int8Attempt] = []
    for recipe, cfg in recipes:
        candidate = out_path.with_name(out_path.name + ".candidate")
        quantize_int8(fp32_path, candidate, calibration, cfg)
        accuracy = evaluate(candidate)
        drop = (baseline_accuracy - accuracy) * 100.0
        attempt = Int8Attempt(
            recipe, cfg.calibration_method, list(cfg.nodes_to_exclude), accuracy, drop, drop <= max_drop_pp
        )
        attempts.append(attempt)
        if attempt.accepted:
            os.replace(candidate, out_path)
            return out_path, attempts
        log(
            f"int8 ({recipe}): accuracy {accuracy:.2%} loses {drop:.2f} points (budget {max_drop_pp:g}); trying the next recipe"
        )
        candidate.unlink(missing_ok=True)
    return None, attempts


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
