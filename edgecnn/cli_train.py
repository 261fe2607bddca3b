"""The workstation commands `edgecnn train` and `edgecnn export` (registered on `edgecnn.cli.app`).

Thin wrappers over `edgecnn.train` and `edgecnn.export`; TensorFlow is imported inside them only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from edgecnn.cli import _csv, app, argument, echo, print_json, user_errors
from edgecnn.verdict import EXIT_CODE as VERDICT_EXIT_CODE, LIKELY_CAUSES


@app.command()
@argument(
    "data_dir",
    required=False,
    help="Folder of class subfolders (DATA/<class>/<image>), or with train/ and val/ subfolders. Default: the built-in digits.",
)
@click.option(
    "--model",
    default="cnn",
    help="Architecture: cnn (small configurable CNN), resnet50 or mobilenetv2 (Keras applications backbone + softmax head).",
)
@click.option(
    "--image-size",
    default=None,
    help="Input size N or HxW in pixels. Default: the data's median side, within 8..64 (cnn) or 32..224 (resnet50, mobilenetv2).",
)
@click.option(
    "--channels",
    default=None,
    type=int,
    help="1 (grayscale) or 3 (RGB). Default: 1 if every image is grayscale, else 3; resnet50 and mobilenetv2 always 3.",
)
@click.option("--epochs", default=20, help="Maximum training epochs (early stopping may end sooner).")
@click.option("--batch-size", default=32, help="Images per training step.")
@click.option(
    "--validation-split",
    default=0.2,
    help="Fraction of each class held out for validation (ignored for train/ + val/ folders).",
)
@click.option("--seed", default=1337, help="Seed for the split, shuffling, augmentation and initialization.")
@click.option(
    "--augment",
    default="",
    help="Comma list applied to the training subset only: hflip, vflip, rotate (+-18 deg), zoom (+-10%). Default: none.",
)
@click.option("--learning-rate", default=1e-3, help="Adam learning rate.")
@click.option(
    "--patience",
    default=5,
    help="Early stopping: epochs without a better validation loss before stopping (best weights kept); 0 turns it off.",
)
@click.option(
    "--conv-filters",
    default="32,64",
    help="cnn: filters per Conv2D block, comma separated; KxF sets a block's kernel, e.g. 5x32,3x64.",
)
@click.option("--kernel-size", default=3, help="cnn: Conv2D kernel size (square) for blocks without KxF.")
@click.option("--strides", default=1, help="cnn: Conv2D strides.")
@click.option("--padding", default="same", help="cnn: Conv2D padding, valid or same.")
@click.option("--activation", default="relu", help="cnn: Conv2D activation (any Keras activation name).")
@click.option("--pool", default="max", help="cnn: pooling after each conv block: max, avg or none.")
@click.option("--pool-size", default=2, help="cnn: pooling window.")
@click.option("--pool-strides", default=None, type=int, help="cnn: pooling strides. Default: the pool size.")
@click.option("--pool-padding", default="valid", help="cnn: pooling padding, valid or same.")
@click.option("--head", default="flatten", help="cnn: flatten (Flatten + Dense) or gap (GlobalAveragePooling2D).")
@click.option(
    "--dense",
    default="64",
    help="cnn: hidden Dense layer sizes before the softmax, comma separated ('' for none).",
)
@click.option("--dropout", default=0.0, help="Dropout rate after each hidden Dense layer (resnet50: before the head).")
@click.option(
    "--weights",
    default="none",
    help="resnet50 / mobilenetv2 backbone weights: none (random), imagenet (downloaded once by Keras, needs the network) or a PATH to a local .h5 file.",
)
@click.option(
    "--fine-tune-layers",
    default=0,
    help="resnet50 / mobilenetv2: after training the head, unfreeze the top N backbone layers (BatchNorm stays frozen); 0 = no fine-tuning.",
)
@click.option(
    "--alpha",
    default=1.0,
    help="mobilenetv2 width multiplier: 0.35, 0.5, 0.75, 1.0, 1.3 or 1.4 (Keras' choices). Default: 1.0.",
)
@click.option(
    "--bn-momentum",
    default=None,
    type=float,
    help="resnet50 / mobilenetv2 from random weights (--weights none): momentum of the backbone's BatchNormalization moving statistics. Default: 0.5 (Keras' own 0.99 / 0.999 suit ImageNet-sized data: from scratch on small data the moving statistics lag the weights and validation stays at chance). Pretrained backbones keep their own.",
)
@click.option("--fine-tune-epochs", default=5, help="resnet50: epochs of the fine-tuning phase.")
@click.option(
    "--fine-tune-learning-rate",
    default=None,
    type=float,
    help="resnet50: learning rate of the fine-tuning phase. Default: --learning-rate / 10.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Stop at the first image that cannot be decoded instead of skipping it with a warning.",
)
@click.option(
    "--out",
    default=Path("models/digits"),
    type=click.Path(path_type=Path),
    help="Model folder to write (replaced atomically).",
)
@click.option(
    "--distribute",
    default="none",
    help="none (one device), mirrored (all local GPUs; one replica on a CPU-only machine) or multiworker (the hosts in the TF_CONFIG environment variable; only the chief writes --out). --batch-size is per replica. Default: none.",
)
@click.option(
    "--distribute-timeout",
    default=120.0,
    help="Seconds to wait for the other workers (at start and in each collective step) before failing. Default: 120.",
)
@click.option(
    "--allow-poor",
    is_flag=True,
    help="Write the model even if it did not learn (validation accuracy within a small margin of chance or not above the majority class). Without it such a run writes nothing, leaves --out as it was and exits with code 3.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for scripts).")
def train(
    data_dir: Optional[Path],
    model: str,
    image_size: Optional[str],
    channels: Optional[int],
    epochs: int,
    batch_size: int,
    validation_split: float,
    seed: int,
    augment: str,
    learning_rate: float,
    patience: int,
    conv_filters: str,
    kernel_size: int,
    strides: int,
    padding: str,
    activation: str,
    pool: str,
    pool_size: int,
    pool_strides: Optional[int],
    pool_padding: str,
    head: str,
    dense: str,
    dropout: float,
    weights: str,
    fine_tune_layers: int,
    alpha: float,
    bn_momentum: Optional[float],
    fine_tune_epochs: int,
    fine_tune_learning_rate: Optional[float],
    strict: bool,
    out: Path,
    distribute: str,
    distribute_timeout: float,
    allow_poor: bool,
    as_json: bool,
):
    """Train a classifier on a folder of class subfolders (or the built-in digits) and write models/NAME/."""
    with user_errors():
        from edgecnn.models import ArchitectureOptions, parse_conv_blocks, parse_dense
        from edgecnn.runtime import parse_image_size
        from edgecnn.train import TrainConfig, train as run_train

        config = TrainConfig(
            data_dir=str(data_dir) if data_dir is not None else None,
            out=str(out),
            model=model,
            image_size=None if image_size in (None, "auto") else parse_image_size(image_size),
            channels=channels,
            epochs=epochs,
            batch_size=batch_size,
            validation_split=validation_split,
            seed=seed,
            augment=_csv(augment),
            learning_rate=learning_rate,
            early_stopping_patience=patience,
            strict=strict,
            options=ArchitectureOptions(
                conv_blocks=parse_conv_blocks(conv_filters, kernel_size, strides, padding, activation),
                pool=pool,
                pool_size=pool_size,
                pool_strides=pool_strides,
                pool_padding=pool_padding,
                head=head,
                dense=parse_dense(dense),
                dropout=dropout,
                weights=weights,
                alpha=alpha,
                bn_momentum=bn_momentum,
            ),
            fine_tune_layers=fine_tune_layers,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_learning_rate=fine_tune_learning_rate,
            verbose=2 if as_json else None,
            distribute=distribute,
            distribute_timeout_s=distribute_timeout,
            allow_poor=allow_poor,
        )
        log = (lambda msg: echo(msg, err=True)) if as_json else echo
        result = run_train(config, log=log)
        if as_json:
            print_json(result.summary())
        if result.refused:
            echo(_did_not_learn(result), err=True, color="red")
            raise click.exceptions.Exit(VERDICT_EXIT_CODE)
        if as_json:
            return
        echo(
            f"validation accuracy {result.val_accuracy:.2%} (best epoch {result.best_val_accuracy:.2%}), "
            f"{result.epochs_run} epochs in {result.seconds:.0f} s",
            color="green",
        )
        if not result.wrote_model:
            echo(f"not the chief: the chief writes {result.out_dir}/ (this worker's copy was removed)")
            return
        echo(
            f"wrote {result.out_dir}/: model.keras, metadata.json, classes.txt, training_curves.png, confusion_matrix.png"
        )
        if result.verdict and not result.verdict.learned:
            echo(f"warning: the model {result.verdict.summary()}; {LIKELY_CAUSES}", color="yellow")
            return
        echo(f"next: edgecnn export {result.out_dir} --quantize int8")


def _did_not_learn(result) -> str:
    """The one line `train` ends with when the model did not learn and --allow-poor was not given."""
    v = result.verdict
    return (
        f"error: the model did not learn: validation accuracy {v.val_accuracy:.1%} (best epoch "
        f"{v.best_val_accuracy:.1%}) is not above {v.threshold:.1%} (chance {v.chance:.1%}, majority class "
        f"{v.majority:.1%}, {v.validation_images} validation images); {LIKELY_CAUSES}; nothing was written "
        f"({result.out_dir} is untouched; --allow-poor writes the model anyway)"
    )


# ==== end datasets / train ================================================================


# ==== export (stage 2) ====================================================================
@app.command()
@argument("model_dir", help="A trained model folder (models/NAME/ with model.keras and metadata.json).")
@click.option(
    "--quantize",
    default="",
    help="Comma list of extra variants: int8 (static, calibrated, for CPUs), fp16 (for GPUs), auto (build int8, and fp16 where a GPU is present, measure, recommend the fastest within the accuracy budget). FP32 is always built.",
)
@click.option(
    "--data",
    default=None,
    type=click.Path(path_type=Path),
    help="Folder of class subfolders for parity checks and calibration. Default: the training folder recorded in metadata.json (its validation subset checks, its training subset calibrates).",
)
@click.option("--opset", default=17, help="ONNX opset of the exported graph.")
@click.option(
    "--input-dtype",
    default="uint8",
    help="Model input type: uint8 (raw pixels, smallest transfers) or float32 (raw 0-255 pixels as floats).",
)
@click.option("--layout", default="nhwc", help="Model input layout: nhwc (images as decoded) or nchw.")
@click.option("--calibration-samples", default=200, help="int8: class-balanced training images used for calibration.")
@click.option(
    "--calibration-method",
    default="minmax",
    help="int8: calibration method: minmax, entropy or percentile (99.999).",
)
@click.option(
    "--max-accuracy-drop",
    default=1.0,
    help="Largest top-1 accuracy loss of a variant against FP32, in percentage points. When int8 misses it, its layers are ranked by measured sensitivity and the most harmful stay in float, one more per try (at most 8 re-quantizations) before the export fails. Default: 1.0.",
)
@click.option(
    "--max-class-drop",
    default=None,
    type=float,
    help="int8: also cap the worst class's recall loss against FP32, in percentage points (same float fallback as --max-accuracy-drop). Default: no per-class limit.",
)
@click.option(
    "--parity-samples",
    default=256,
    help="Validation images used for the parity gate and accuracies (0 = all).",
)
@click.option("--latency-batch", default=32, help="The larger batch size of the latency columns (the other is 1).")
@click.option(
    "--verify-samples",
    default=64,
    help="Class-balanced validation images (with Keras' answers) kept in the folder as verification.npz, so that edgecnn verify and tune can check the model on the device; at most 32 MB of pixels; 0 = none. Default: 64.",
)
@click.option(
    "--triton",
    default=None,
    type=click.Path(path_type=Path),
    help="Also write a Triton model repository here (DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx) with the recommended variant; the same as `edgecnn deploy triton MODEL_DIR --out DIR` after the export.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON (for scripts).")
def export(
    model_dir: Path,
    quantize: str,
    data: Optional[Path],
    opset: int,
    input_dtype: str,
    layout: str,
    calibration_samples: int,
    calibration_method: str,
    max_accuracy_drop: float,
    max_class_drop: Optional[float],
    parity_samples: int,
    latency_batch: int,
    verify_samples: int,
    triton: Optional[Path],
    as_json: bool,
):
    """Export a trained model to ONNX (FP32 with a parity gate against Keras), plus INT8/FP16 variants."""
    with user_errors():
        from edgecnn.export import ExportConfig, export as run_export

        config = ExportConfig(
            model_dir=str(model_dir),
            quantize=_csv(quantize),
            data_dir=str(data) if data else None,
            opset=opset,
            input_dtype=input_dtype,
            layout=layout,
            calibration_samples=calibration_samples,
            calibration_method=calibration_method,
            max_accuracy_drop=max_accuracy_drop,
            max_class_drop=max_class_drop,
            parity_samples=parity_samples,
            latency_batch=latency_batch,
            triton=str(triton) if triton else None,
            verify_samples=verify_samples,
        )

        def log(msg):
            return echo(msg, err=True)

        report = run_export(config, log=log)
        if as_json:
            print_json(report.to_dict())
            return
        _print_export_table(report)
        echo(f"wrote {model_dir}/export_report.md and export_report.json ({report.seconds:.0f} s)")
        if report.triton_repository:
            echo(f"Triton model repository: {report.triton_repository}")
        best = next((v for v in report.variants if v.recommended), report.variants[0])
        echo(f"next: edgecnn profile {' '.join(v.path for v in report.variants)}")
        echo(f"      edgecnn serve {best.path}")


def _print_export_table(report) -> None:
    from edgecnn.terminal import Table

    n = report.latency_batch
    table = Table(
        title=f"export of {report.model_dir} (Keras accuracy {report.keras_accuracy:.2%} on {report.images} images)"
    )
    for col in ("variant", "MB", "accuracy", "=Keras", "max|dp|", "ms b=1", f"ms/img b={n}", "best"):
        table.add_column(col, right=col != "variant")
    for v in report.variants:
        table.add_row(
            v.variant,
            f"{v.size_bytes / 1e6:.2f}",
            f"{v.accuracy:.2%}",
            f"{v.keras_agreement:.2%}",
            f"{v.max_prob_diff:.1e}",
            f"{v.latency_ms_b1:.3f}",
            f"{v.latency_ms_bn:.3f}",
            "yes" if v.recommended else "",
        )
    table.print()
    if report.nodes_in_float:
        echo(f"int8 kept in float: {', '.join(report.nodes_in_float)}")
    if report.int8_sensitivity:
        worst = ", ".join(f"{s['node']} ({s['sqnr_db']:.1f} dB)" for s in report.int8_sensitivity[:3])
        echo(f"int8 most sensitive layers: {worst} (all ten in export_report.md)")


# ==== end export ==========================================================================

# ==== predict (stage 3) ===================================================================
