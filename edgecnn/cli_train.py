"""The workstation commands `edgecnn train` and `edgecnn export` (registered on `edgecnn.cli.app`).

Thin wrappers over `edgecnn.train` and `edgecnn.export`; TensorFlow is imported inside them only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli import _csv, app, print_json, user_errors


@app.command()
def train(
    data_dir: Optional[Path] = typer.Argument(
        None,
        help="Folder of class subfolders (DATA/<class>/<image>), or with train/ and val/ subfolders. Default: the built-in digits.",
    ),
    model: str = typer.Option(
        "cnn",
        "--model",
        help="Architecture: cnn (small configurable CNN), resnet50 or mobilenetv2 (Keras applications backbone + softmax head).",
    ),
    image_size: Optional[str] = typer.Option(
        None,
        "--image-size",
        help="Input size N or HxW in pixels. Default: the data's median side, within 8..64 (cnn) or 32..224 (resnet50, mobilenetv2).",
    ),
    channels: Optional[int] = typer.Option(
        None,
        "--channels",
        help="1 (grayscale) or 3 (RGB). Default: 1 if every image is grayscale, else 3; resnet50 and mobilenetv2 always 3.",
    ),
    epochs: int = typer.Option(20, "--epochs", help="Maximum training epochs (early stopping may end sooner)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per training step."),
    validation_split: float = typer.Option(
        0.2,
        "--validation-split",
        help="Fraction of each class held out for validation (ignored for train/ + val/ folders).",
    ),
    seed: int = typer.Option(1337, "--seed", help="Seed for the split, shuffling, augmentation and initialization."),
    augment: str = typer.Option(
        "",
        "--augment",
        help="Comma list applied to the training subset only: hflip, vflip, rotate (+-18 deg), zoom (+-10%). Default: none.",
    ),
    learning_rate: float = typer.Option(1e-3, "--learning-rate", help="Adam learning rate."),
    patience: int = typer.Option(
        5,
        "--patience",
        help="Early stopping: epochs without a better validation loss before stopping (best weights kept); 0 turns it off.",
    ),
    conv_filters: str = typer.Option(
        "32,64",
        "--conv-filters",
        help="cnn: filters per Conv2D block, comma separated; KxF sets a block's kernel, e.g. 5x32,3x64.",
    ),
    kernel_size: int = typer.Option(
        3, "--kernel-size", help="cnn: Conv2D kernel size (square) for blocks without KxF."
    ),
    strides: int = typer.Option(1, "--strides", help="cnn: Conv2D strides."),
    padding: str = typer.Option("same", "--padding", help="cnn: Conv2D padding, valid or same."),
    activation: str = typer.Option("relu", "--activation", help="cnn: Conv2D activation (any Keras activation name)."),
    pool: str = typer.Option("max", "--pool", help="cnn: pooling after each conv block: max, avg or none."),
    pool_size: int = typer.Option(2, "--pool-size", help="cnn: pooling window."),
    pool_strides: Optional[int] = typer.Option(
        None, "--pool-strides", help="cnn: pooling strides. Default: the pool size."
    ),
    pool_padding: str = typer.Option("valid", "--pool-padding", help="cnn: pooling padding, valid or same."),
    head: str = typer.Option(
        "flatten", "--head", help="cnn: flatten (Flatten + Dense) or gap (GlobalAveragePooling2D)."
    ),
    dense: str = typer.Option(
        "64", "--dense", help="cnn: hidden Dense layer sizes before the softmax, comma separated ('' for none)."
    ),
    dropout: float = typer.Option(
        0.0, "--dropout", help="Dropout rate after each hidden Dense layer (resnet50: before the head)."
    ),
    weights: str = typer.Option(
        "none",
        "--weights",
        help="resnet50 / mobilenetv2 backbone weights: none (random), imagenet (downloaded once by Keras, needs the network) or a PATH to a local .h5 file.",
    ),
    fine_tune_layers: int = typer.Option(
        0,
        "--fine-tune-layers",
        help="resnet50 / mobilenetv2: after training the head, unfreeze the top N backbone layers (BatchNorm stays frozen); 0 = no fine-tuning.",
    ),
    alpha: float = typer.Option(
        1.0,
        "--alpha",
        help="mobilenetv2 width multiplier: 0.35, 0.5, 0.75, 1.0, 1.3 or 1.4 (Keras' choices). Default: 1.0.",
    ),
    fine_tune_epochs: int = typer.Option(5, "--fine-tune-epochs", help="resnet50: epochs of the fine-tuning phase."),
    fine_tune_learning_rate: Optional[float] = typer.Option(
        None,
        "--fine-tune-learning-rate",
        help="resnet50: learning rate of the fine-tuning phase. Default: --learning-rate / 10.",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first image that cannot be decoded instead of skipping it with a warning."
    ),
    out: Path = typer.Option(Path("models/digits"), "--out", help="Model folder to write (replaced atomically)."),
    distribute: str = typer.Option(
        "none",
        "--distribute",
        help="none (one device), mirrored (all local GPUs; one replica on a CPU-only machine) or multiworker (the hosts in the TF_CONFIG environment variable; only the chief writes --out). --batch-size is per replica. Default: none.",
    ),
    distribute_timeout: float = typer.Option(
        120.0,
        "--distribute-timeout",
        help="Seconds to wait for the other workers (at start and in each collective step) before failing. Default: 120.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (for scripts)."),
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
            ),
            fine_tune_layers=fine_tune_layers,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_learning_rate=fine_tune_learning_rate,
            verbose=2 if as_json else None,
            distribute=distribute,
            distribute_timeout_s=distribute_timeout,
        )
        log = (lambda msg: typer.echo(msg, err=True)) if as_json else typer.echo
        result = run_train(config, log=log)
        if as_json:
            print_json(result.summary())
            return
        typer.secho(
            f"validation accuracy {result.val_accuracy:.2%} (best epoch {result.best_val_accuracy:.2%}), "
            f"{result.epochs_run} epochs in {result.seconds:.0f} s",
            fg=typer.colors.GREEN,
        )
        if not result.wrote_model:
            typer.echo(f"not the chief: the chief writes {result.out_dir}/ (this worker's copy was removed)")
            return
        typer.echo(
            f"wrote {result.out_dir}/: model.keras, metadata.json, classes.txt, training_curves.png, confusion_matrix.png"
        )
        typer.echo(f"next: edgecnn export {result.out_dir} --quantize int8")


# ==== end datasets / train ================================================================


# ==== export (stage 2) ====================================================================
@app.command()
def export(
    model_dir: Path = typer.Argument(
        ..., help="A trained model folder (models/NAME/ with model.keras and metadata.json)."
    ),
    quantize: str = typer.Option(
        "",
        "--quantize",
        help="Comma list of extra variants: int8 (static, calibrated, for CPUs), fp16 (for GPUs), auto (build int8, and fp16 where a GPU is present, measure, recommend the fastest within the accuracy budget). FP32 is always built.",
    ),
    data: Optional[Path] = typer.Option(
        None,
        "--data",
        help="Folder of class subfolders for parity checks and calibration. Default: the training folder recorded in metadata.json (its validation subset checks, its training subset calibrates).",
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset of the exported graph."),
    input_dtype: str = typer.Option(
        "uint8",
        "--input-dtype",
        help="Model input type: uint8 (raw pixels, smallest transfers) or float32 (raw 0-255 pixels as floats).",
    ),
    layout: str = typer.Option("nhwc", "--layout", help="Model input layout: nhwc (images as decoded) or nchw."),
    calibration_samples: int = typer.Option(
        200, "--calibration-samples", help="int8: class-balanced training images used for calibration."
    ),
    calibration_method: str = typer.Option(
        "minmax", "--calibration-method", help="int8: calibration method: minmax, entropy or percentile (99.999)."
    ),
    max_accuracy_drop: float = typer.Option(
        1.0,
        "--max-accuracy-drop",
        help="Largest top-1 accuracy loss of a variant against FP32, in percentage points; int8 tries float fallbacks before failing.",
    ),
    parity_samples: int = typer.Option(
        256, "--parity-samples", help="Validation images used for the parity gate and accuracies (0 = all)."
    ),
    latency_batch: int = typer.Option(
        32, "--latency-batch", help="The larger batch size of the latency columns (the other is 1)."
    ),
    verify_samples: int = typer.Option(
        64,
        "--verify-samples",
        help="Class-balanced validation images (with Keras' answers) kept in the folder as verification.npz, so that edgecnn verify and tune can check the model on the device; at most 32 MB of pixels; 0 = none. Default: 64.",
    ),
    triton: Optional[Path] = typer.Option(
        None,
        "--triton",
        help="Also write a Triton model repository here (DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx) with the recommended variant; the same as `edgecnn deploy triton MODEL_DIR --out DIR` after the export.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON (for scripts)."),
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
            parity_samples=parity_samples,
            latency_batch=latency_batch,
            triton=str(triton) if triton else None,
            verify_samples=verify_samples,
        )

        def log(msg):
            return typer.echo(msg, err=True)

        report = run_export(config, log=log)
        if as_json:
            print_json(report.to_dict())
            return
        _print_export_table(report)
        typer.echo(f"wrote {model_dir}/export_report.md and export_report.json ({report.seconds:.0f} s)")
        if report.triton_repository:
            typer.echo(f"Triton model repository: {report.triton_repository}")
        best = next((v for v in report.variants if v.recommended), report.variants[0])
        typer.echo(f"next: edgecnn profile {' '.join(v.path for v in report.variants)}")
        typer.echo(f"      edgecnn serve {best.path}")


def _print_export_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    n = report.latency_batch
    table = Table(
        title=f"export of {report.model_dir} (Keras accuracy {report.keras_accuracy:.2%} on {report.images} images)"
    )
    for col in ("variant", "MB", "accuracy", "=Keras", "max|dp|", "ms b=1", f"ms/img b={n}", "best"):
        table.add_column(col, justify="left" if col == "variant" else "right")
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
    Console().print(table)
    if report.nodes_in_float:
        typer.echo(f"int8 kept in float: {', '.join(report.nodes_in_float)}")


# ==== end export ==========================================================================

# ==== predict (stage 3) ===================================================================
