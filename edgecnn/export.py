"""`edgecnn export`: a trained model folder -> ONNX files checked against Keras.

The graph takes raw decoded pixels (uint8 NHWC by default, dynamic batch) named ``image``
and returns ``probabilities``; the training-time preprocessing is inside it, BatchNorm is
folded, and edgecnn's metadata rides in ``metadata_props``. Every variant is compared with
Keras on real validation images; the FP32 model must agree on top-1 for every image and
within 1e-4 in probability, or the export fails and keeps no file.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecnn.errors import DataError, EdgecnnError, SettingError, check_at_least, check_one_of
from edgecnn.files import check_writable, replace_files_together, scratch_in, write_json, write_text
from edgecnn.metadata import INPUT_DTYPES, LAYOUTS, VARIANT_FILES, ModelMetadata
from edgecnn.verify import VERIFY_FILE, check_verifiable_image
from edgecnn.convert import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, attach, convert

from edgecnn.variants import VARIANTS, Build, chosen_variants

FP32_MAX_DIFF = 1e-4


@dataclass(frozen=True)
class ExportConfig:
    model_dir: str
    quantize: tuple[str, ...] = ()  # of int8, fp16, auto; fp32 is always built
    data_dir: str | None = None  # None: the training folder (its validation subset)
    opset: int = DEFAULT_OPSET
    input_dtype: str = "uint8"  # uint8 | float32 (raw pixels either way)
    layout: str = "nhwc"  # nhwc | nchw
    calibration_samples: int = 200
    min_calibration_samples: int = 16
    calibration_method: str = "minmax"
    max_accuracy_drop: float = 1.0  # percentage points of top-1 accuracy
    max_class_drop: float | None = None  # percentage points of the worst class's recall; None: no limit
    parity_samples: int = 256  # validation images used for parity and accuracy
    latency_batch: int = 32  # the "larger batch" of the report
    triton: str | None = None
    triton_max_batch_size: int = 32
    # Validation images kept in the folder for `edgecnn verify` / `tune` (0: none); by default the ones
    # the accuracy check used (when they fit in MAX_VERIFY_BYTES), so verify judges what export judged.
    verify_samples: int = 256

    def __post_init__(self):
        check_one_of("input_dtype", self.input_dtype, INPUT_DTYPES)
        check_one_of("layout", self.layout, LAYOUTS)
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise SettingError(
                "opset", self.opset, f"expected {MIN_OPSET} to {MAX_OPSET} (INT8's per-channel QDQ needs {MIN_OPSET})"
            )
        check_at_least("max_accuracy_drop", self.max_accuracy_drop, 0, " percentage points")
        check_at_least("parity_samples", self.parity_samples, 0, " (0: all)")
        check_at_least("verify_samples", self.verify_samples, 0, " (0: none)")
        check_at_least("latency_batch", self.latency_batch, 1)
        if any(q in ("int8", "auto") for q in self.quantize):  # the calibration set is read for INT8 only
            check_at_least("calibration_samples", self.calibration_samples, self.min_calibration_samples)
        if self.max_class_drop is not None:
            check_at_least("max_class_drop", self.max_class_drop, 0, " percentage points")


@dataclass
class VariantReport:
    variant: str
    path: str
    size_bytes: int
    accuracy: float
    keras_agreement: float  # top-1 agreement with the Keras model
    max_prob_diff: float  # max |p_onnx - p_keras|
    latency_ms_b1: float | None = None
    latency_ms_bn: float | None = None
    recommended: bool = False
    note: str = ""
    class_recall: list[float] = field(default_factory=list)  # recall of each class (the model's class order)


@dataclass
class ExportReport:
    model_dir: str
    keras_accuracy: float
    images: int
    latency_batch: int
    variants: list[VariantReport] = field(default_factory=list)
    int8_attempts: list[dict] = field(default_factory=list)
    nodes_in_float: list[str] = field(default_factory=list)
    int8_sensitivity: list[dict] = field(default_factory=list)  # the 10 most harmful quantized layers, worst first
    class_names: list[str] = field(default_factory=list)
    triton_repository: str | None = None
    seconds: float = 0.0
    provider: str = "CPUExecutionProvider"
    verification: dict = field(default_factory=dict)  # file, images, bytes of the verification set

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        n = self.latency_batch
        lines = [
            f"| variant | file | size (MB) | accuracy | agreement with Keras | max prob diff | ms/batch b=1 | ms/image b={n} | recommended |",
            "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for v in self.variants:
            lines.append(
                f"| {v.variant} | {Path(v.path).name} | {v.size_bytes / 1e6:.2f} | {v.accuracy:.2%} | {v.keras_agreement:.2%} | "
                f"{v.max_prob_diff:.2e} | {_fmt(v.latency_ms_b1)} | {_fmt(v.latency_ms_bn)} | {'yes' if v.recommended else ''} |"
            )
        lines.append("")
        lines.append(
            f"Keras accuracy {self.keras_accuracy:.2%} on {self.images} validation images; latency measured here on {self.provider}."
        )
        if self.nodes_in_float:
            lines.append(f"INT8 nodes kept in float: {', '.join(self.nodes_in_float)}.")
        if self.int8_sensitivity:
            lines += [
                "",
                "Most sensitive INT8 layers (each quantized alone, on calibration images; lowest SQNR first):",
                "",
            ]
            lines += [
                "| layer | op | output SQNR (dB) | top-1 agreement | kept in float |",
                "|---|---|---:|---:|:---:|",
            ]
            for s in self.int8_sensitivity:
                kept = "yes" if s["node"] in self.nodes_in_float else ""
                lines.append(f"| {s['node']} | {s['op_type']} | {s['sqnr_db']:.1f} | {s['agreement']:.2%} | {kept} |")
        recalls = [v for v in self.variants if v.class_recall]
        if recalls and self.class_names:
            lines += ["", "Recall per class:", ""]
            lines.append("| class | " + " | ".join(v.variant for v in recalls) + " |")
            lines.append("|---|" + "---:|" * len(recalls))
            for i, name in enumerate(self.class_names):
                lines.append(f"| {name} | " + " | ".join(f"{v.class_recall[i]:.2%}" for v in recalls) + " |")
        return "\n".join(lines) + "\n"


def _fmt(x):
    return "" if x is None else f"{x:.3f}"


def export(config: ExportConfig, log=print) -> ExportReport:
    """Convert, check and quantize per `config`; returns the report (also written as JSON/MD)."""
    want = chosen_variants(config.quantize)  # an unknown --quantize fails before any work
    started = time.time()
    from edgecnn.train import MODEL_FILE, load_keras_model

    model_dir = Path(config.model_dir)
    keras_model, meta, record = load_keras_model(model_dir)
    check_writable(model_dir / "export_report.json")  # before the conversion, not after
    if config.verify_samples > 0:
        check_verifiable_image((*meta.image_size, meta.channels))
    if config.triton:
        from edgecnn.triton import check_triton_settings

        fix = "rename the model folder, or write the repository with edgecnn deploy triton --name NAME"
        check_triton_settings(model_dir.name, config.triton_max_batch_size, fix)
        check_writable(Path(config.triton) / model_dir.name, folder=True)  # an earlier export's is updated
    meta = meta.replace(
        layout=config.layout, input_dtype=config.input_dtype, source_hash=_sha256(model_dir / MODEL_FILE)
    )
    split = _data_split(config, record, meta, log)
    from edgecnn.data import class_balanced

    checked = (
        class_balanced(split.validation, config.parity_samples, seed=0)
        if config.parity_samples > 0
        else split.validation
    )
    val_images, val_labels = _load(checked, meta, "validation")

    calibration = None
    if any(VARIANTS[name].needs_calibration for name in want):
        calib_samples = class_balanced(split.train, config.calibration_samples, seed=0)
        if len(calib_samples) < config.min_calibration_samples:
            raise DataError(
                f"only {len(calib_samples)} calibration images in {split.root}; INT8 needs at least "
                f"{config.min_calibration_samples} (add images or pass --data DIR)"
            )
        calibration, _ = _load(calib_samples, meta, "calibration")

    log(f"keras: predicting {len(val_images)} validation images")
    keras_probs = keras_model.predict(val_images.astype(np.float32), batch_size=32, verbose=0)
    keras_accuracy = float((keras_probs.argmax(1) == val_labels).mean())
    report = ExportReport(
        str(model_dir), keras_accuracy, len(val_images), config.latency_batch, class_names=list(meta.class_names)
    )

    # The scratch folder leaves with the old set in replace_files_together (its cleanup then finds nothing).
    why = "export writes its files into the model folder: copy the folder somewhere writable"
    with scratch_in(model_dir, ".edgecnn-export-", why) as tmp:
        log(f"converting to ONNX (opset {config.opset}, {config.input_dtype} {config.layout.upper()} input)")
        fp32_tmp = convert(keras_model, meta, tmp / VARIANT_FILES["fp32"], config.opset, log=log)
        inputs = _model_inputs(val_images, meta)
        fp32 = _score("fp32", fp32_tmp, inputs, val_labels, keras_probs)
        if fp32.keras_agreement < 1.0 or fp32.max_prob_diff > FP32_MAX_DIFF:
            raise EdgecnnError(
                f"parity check failed: the ONNX model agrees with Keras on {fp32.keras_agreement:.2%} of top-1 answers "
                f"(need 100%) with max probability difference {fp32.max_prob_diff:.2e} (limit {FP32_MAX_DIFF:g}); "
                "no file written. Try another --opset, and report the model to edgecnn"
            )
        staged = {"fp32": (fp32_tmp, fp32)}
        for name in want:
            build = Build(
                config,
                tmp,
                fp32_tmp,
                fp32.accuracy,
                _model_inputs(calibration, meta) if VARIANTS[name].needs_calibration else None,
                score=lambda path, note="", name=name: _score(name, path, inputs, val_labels, keras_probs, note=note),
                attach=lambda path, name=name: attach(path, meta.replace(variant=name)),
                report=report,
                log=log,
                fp32_recall=tuple(fp32.class_recall),
            )
            staged[name] = VARIANTS[name].build(build)

        log("measuring latency on this machine (edgecnn profile)")
        for name, (path, variant) in staged.items():
            variant.latency_ms_b1, variant.latency_ms_bn, report.provider = measure_latency(path, config.latency_batch)

        # Everything this export writes into the folder is committed as one set at the end: a crash
        # or a kill before that leaves the previous export whole, never a mix of old and new files.
        new_files = {}
        verification = None
        if config.verify_samples > 0:
            from edgecnn.verify import write_verification_set

            verification, kept, size = write_verification_set(
                tmp,
                val_images,
                val_labels,
                keras_probs,
                meta.class_names,
                config.max_accuracy_drop,
                config.verify_samples,
            )
            new_files[verification.name] = verification
            report.verification = {"file": str(model_dir / verification.name), "images": kept, "bytes": size}
            log(
                f"verification set: {kept} images with Keras' answers in {verification.name} ({size / 1e6:.2f} MB) "
                "for edgecnn verify / tune"
            )
        _recommend(
            [v for _, v in staged.values()],
            fp32.accuracy,
            config.max_accuracy_drop,
            passes_verify=None if verification is None else (lambda v: _passes_verify(staged[v.variant][0], v)),
        )
        for name, (path, variant) in staged.items():
            new_files[VARIANT_FILES[name]] = path
            variant.path = str(model_dir / VARIANT_FILES[name])
            report.variants.append(variant)
        remove = [file for name, file in VARIANT_FILES.items() if name not in staged and (model_dir / file).exists()]
        for file in remove:
            log(f"removing {model_dir / file} from an earlier export: it no longer matches this export's settings")
        derived = _derived_from_an_earlier_export(model_dir)
        if derived:
            log(f"removing {', '.join(derived)}: tuned for the earlier export; run edgecnn tune {model_dir} again")
            remove += derived
        if verification is None and (model_dir / VERIFY_FILE).exists():
            remove.append(VERIFY_FILE)
            log("removing the verification set of an earlier export (--verify-samples 0)")
        if config.triton:
            from edgecnn.triton import write_triton_repository

            best = next(name for name, (_, variant) in staged.items() if variant.recommended)
            report.triton_repository = str(
                write_triton_repository(
                    Path(config.triton), model_dir.name, staged[best][0], meta, config.triton_max_batch_size
                )
            )
        report.seconds = round(time.time() - started, 2)
        new_files["export_report.json"] = write_json(tmp / "export_report.json", report.to_dict())
        new_files["export_report.md"] = write_text(tmp / "export_report.md", report.markdown())
        replace_files_together(model_dir, new_files, remove)
    return report


def _derived_from_an_earlier_export(model_dir: Path) -> list[str]:
    """Files `edgecnn tune` made from the files this export replaces: its deploy.json and rewritten
    INT8 copies (model.int8.<rewrite>.onnx). Kept, they would run the earlier model."""
    from edgecnn.provider_rewrites import REWRITES, rewritten_name
    from edgecnn.tuned_config import DEPLOY_FILE

    names = [DEPLOY_FILE] + [rewritten_name(VARIANT_FILES["int8"], key) for key in REWRITES]
    return [name for name in names if (model_dir / name).exists()]


def _data_split(config: ExportConfig, record: dict, meta: ModelMetadata, log):
    """The data folder split as in training, labelled with the model's own class indices."""
    from edgecnn.data import split_folder

    train_cfg = record.get("training", {}).get("config", {})
    data_dir = config.data_dir or train_cfg.get("data_dir")
    if not data_dir:
        raise DataError(f"{config.model_dir} does not say where its training data is; pass --data DIR")
    if not Path(data_dir).is_dir():
        raise DataError(
            f"calibration/validation folder {data_dir} does not exist; pass --data DIR with class subfolders"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = split_folder(
            data_dir, train_cfg.get("validation_split", 0.2), train_cfg.get("seed", 1337), class_names=meta.class_names
        )
    for w in caught:
        log(f"warning: {w.message}")
    recorded = record.get("training", {}).get("dataset", {}).get("fingerprint")
    if config.data_dir is None and recorded and recorded != split.fingerprint():
        log(f"note: {data_dir} changed since training (dataset fingerprint differs)")
    return split


def _load(samples, meta: ModelMetadata, what: str):
    from edgecnn.data import load_arrays

    images, labels, problems = load_arrays(samples, meta.image_size, meta.channels)
    if len(images) == 0:
        raise DataError(f"no decodable {what} images ({problems[0] if problems else 'none found'})")
    return images, labels


def _model_inputs(images: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    from edgecnn.images import to_batch

    return to_batch(list(images), meta.layout, meta.input_dtype)


def _score(
    variant: str, path: Path, inputs: np.ndarray, labels: np.ndarray, keras_probs: np.ndarray, note: str = ""
) -> VariantReport:
    from edgecnn.runtime import Runner, RunnerConfig

    runner = Runner(path, RunnerConfig(device="cpu"))
    probs = np.concatenate([runner.run(inputs[i : i + 64]) for i in range(0, len(inputs), 64)])
    return VariantReport(
        variant=variant,
        path=str(path),
        size_bytes=Path(path).stat().st_size,
        accuracy=float((probs.argmax(1) == labels).mean()),
        keras_agreement=float((probs.argmax(1) == keras_probs.argmax(1)).mean()),
        max_prob_diff=float(np.abs(probs - keras_probs).max()),
        note=note,
        class_recall=class_recall(probs.argmax(1), labels, keras_probs.shape[1]),
    )


def class_recall(predicted: np.ndarray, labels: np.ndarray, classes: int) -> list[float]:
    """Recall of each class: the share of its images predicted as it (1.0 for a class without images)."""
    hits = np.bincount(labels[predicted == labels], minlength=classes)
    totals = np.bincount(labels, minlength=classes)
    return [float(h / t) if t else 1.0 for h, t in zip(hits, totals)]


def measure_latency(path: Path, batch: int, seconds: float = 1.0) -> tuple[float, float, str]:
    """(p50 ms of a batch-1 run, p50 ms per image at `batch`, provider), by `edgecnn profile`.

    Runs on the best device here (CUDA where it works), a time budget of `seconds` per batch
    size after a short warm-up: a quick look; `edgecnn profile` gives the full picture.
    """
    from edgecnn.profile import ProfileConfig, profile_models
    from edgecnn.runtime import RunnerConfig

    cfg = ProfileConfig(batch_sizes=(1, batch), seconds=seconds, warmup=2, runner=RunnerConfig(device="auto"))
    profile = profile_models([path], cfg).models[0]
    return profile.stats(1).p50_ms, profile.stats(batch).p50_ms / batch, profile.provider


def _recommend(variants: list[VariantReport], fp32_accuracy: float, budget_pp: float, passes_verify=None) -> None:
    """Mark the fastest variant at batch 1 within the accuracy budget that `passes_verify(variant)`
    (`edgecnn verify` on the verification set beside it, when there is one): export never recommends
    a file that verify, serve and tune then refuse on this machine."""
    within = [v for v in variants if (fp32_accuracy - v.accuracy) * 100 <= budget_pp and v.latency_ms_b1 is not None]
    for variant in sorted(within, key=lambda v: v.latency_ms_b1):
        if passes_verify is None or passes_verify(variant):
            variant.recommended = True
            return


def _passes_verify(path: Path, variant: VariantReport) -> bool:
    """`edgecnn verify` (CPU) of a staged variant, on the verification set staged beside it; why it
    fails goes in the variant's note."""
    from edgecnn.verify import verify

    result = verify(path)
    if not result.passed:
        why = (
            f"within the budget on the checked images, but edgecnn verify fails it on the {result.images} kept in "
            f"{VERIFY_FILE} ({result.drop_pp:.2f} pp drop): not recommended"
        )
        variant.note = f"{variant.note}; {why}" if variant.note else why
    return result.passed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
