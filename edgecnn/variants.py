"""The variants `edgecnn export` can build beside the FP32 model, one entry each.

An entry says how to build its file from the checked FP32 model (`build`), whether it needs
calibration images, and when `--quantize auto` includes it. Its file name is the device-side
contract in `edgecnn.metadata.VARIANT_FILES`. Adding a quantization mode = one entry here and its
file name there; `export()`, `--quantize` and its help follow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.errors import EdgecnnError, check_one_of
from edgecnn.metadata import VARIANT_FILES
from edgecnn.registry import Registry


@dataclass
class Build:
    """What a variant's builder gets from `export()`."""

    config: object  # the ExportConfig
    tmp: Path  # the scratch folder the new set is built in
    fp32_path: Path  # the FP32 model, parity-checked against Keras
    fp32_accuracy: float
    calibration: np.ndarray | None  # model inputs of class-balanced training images (needs_calibration)
    score: Callable  # score(path, note="") -> VariantReport of this variant on the validation images
    attach: Callable  # attach(path): write the model's metadata (variant included) into the file
    report: object  # the ExportReport, for what a builder records (INT8 attempts, nodes kept in float)
    log: Callable[[str], None]
    fp32_recall: tuple[float, ...] = ()  # the FP32 model's recall per class on the validation images

    def path(self, variant: str) -> Path:
        return self.tmp / VARIANT_FILES[variant]


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[Build], tuple[Path, object]]  # -> (file written, its VariantReport)
    needs_calibration: bool = False
    in_auto: Callable[[], bool] = lambda: False  # does `--quantize auto` build it on this machine?


def build_int8(b: Build):
    """Static QDQ INT8, calibrated; if over budget, the most sensitive layers stay in float one at a time."""
    from edgecnn.quantize import MAX_FLOAT_LAYERS, Int8Budget, Int8Config, quantize_within_budget

    b.log(f"int8: calibrating on {len(b.calibration)} class-balanced training images ({b.config.calibration_method})")
    out = b.path("int8")
    budget = Int8Budget(b.fp32_accuracy, b.config.max_accuracy_drop, b.fp32_recall, b.config.max_class_drop)

    def evaluate(path):
        scored = b.score(path)
        return scored.accuracy, scored.class_recall

    result = quantize_within_budget(
        b.fp32_path,
        out,
        b.calibration,
        evaluate,
        budget,
        Int8Config(calibration_method=b.config.calibration_method),
        log=b.log,
    )
    b.report.int8_attempts = [asdict(a) for a in result.attempts]
    b.report.int8_sensitivity = [s.to_dict() for s in result.sensitivity[:10]]
    accepted = result.accepted
    if accepted is None:
        last = result.attempts[-1]
        missed = []
        if last.drop_pp > b.config.max_accuracy_drop:
            missed.append(f"{last.drop_pp:.2f} accuracy points (--max-accuracy-drop {b.config.max_accuracy_drop:g})")
        if b.config.max_class_drop is not None and last.worst_class_drop_pp > b.config.max_class_drop:
            names = b.report.class_names
            name = names[last.worst_class] if last.worst_class < len(names) else str(last.worst_class)
            missed.append(
                f"{last.worst_class_drop_pp:.2f} recall points on class {name} (--max-class-drop {b.config.max_class_drop:g})"
            )
        raise EdgecnnError(
            f"int8 still loses {' and '.join(missed)} with its {len(result.attempts) - 1} most sensitive layers in "
            f"float (at most {MAX_FLOAT_LAYERS} are tried); try more --calibration-samples, another "
            "--calibration-method, larger budgets, or ship fp32/fp16"
        )
    b.report.nodes_in_float = accepted.nodes_in_float
    b.attach(out)
    return out, b.score(out, note=accepted.recipe)


def build_fp16(b: Build):
    """Weights and compute in float16 (for GPUs), within the accuracy budget."""
    from edgecnn.quantize import convert_fp16

    b.log("fp16: converting weights and compute to float16")
    out = convert_fp16(b.fp32_path, b.path("fp16"))
    b.attach(out)
    scored = b.score(out)
    drop = (b.fp32_accuracy - scored.accuracy) * 100
    if drop > b.config.max_accuracy_drop:
        raise EdgecnnError(
            f"fp16 loses {drop:.2f} accuracy points (budget {b.config.max_accuracy_drop:g}); ship fp32 or int8"
        )
    return out, scored


def _cuda_here() -> bool:
    from edgecnn.ort import import_onnxruntime

    return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()


VARIANTS: Registry[Variant] = Registry("quantize")
VARIANTS.add("int8", Variant("int8", build_int8, needs_calibration=True, in_auto=lambda: True))
VARIANTS.add("fp16", Variant("fp16", build_fp16, in_auto=_cuda_here))
QUANTIZE_MODES = ("fp32", *VARIANTS, "auto")  # fp32 is always built; auto: the variants that suit this machine


def chosen_variants(modes) -> list[str]:
    """The variants `quantize` asks for, in registry order; a one-line SettingError for an unknown mode."""
    chosen = set()
    for mode in modes:
        check_one_of("quantize", mode, QUANTIZE_MODES)
        chosen.add(mode)
    return [name for name, v in VARIANTS.items() if name in chosen or ("auto" in chosen and v.in_auto())]
