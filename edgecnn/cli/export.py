"""Stage 2 on the workstation: `edgecnn export`, a trained Keras model to ONNX FP32 (parity-gated
against Keras) and its INT8 / FP16 variants. A thin command over `edgecnn.export`.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli.common import csv, echo, print_json, user_errors
from edgecnn.cli.options import argument, option

INT8 = "INT8"


def export(
    ctx: typer.Context,
    model_dir: Annotated[
        Path,
        argument(metavar="MODEL_DIR", help="A trained model folder (models/NAME/ with model.keras and metadata.json)."),
    ],
    quantize: Annotated[
        str,
        option(
            help="Comma list of extra variants: int8 (static, calibrated, for CPUs), fp16 (for GPUs), auto (build "
            "int8, and fp16 where a GPU is present, measure, recommend the fastest within the accuracy budget). FP32 "
            "is always built. Default: none."
        ),
    ] = "",
    data: Annotated[
        Optional[Path],
        option(
            help="Folder of class subfolders for parity checks and calibration. Default: the training folder "
            "recorded in metadata.json (its validation subset checks, its training subset calibrates)."
        ),
    ] = None,
    opset: Annotated[int, option(help="ONNX opset of the exported graph. Default: 17.")] = 17,
    input_dtype: Annotated[
        str,
        option(
            help="Model input type: uint8 (raw pixels, smallest transfers) or float32 (raw 0-255 pixels as floats). "
            "Default: uint8."
        ),
    ] = "uint8",
    layout: Annotated[
        str, option(help="Model input layout: nhwc (images as decoded) or nchw. Default: nhwc.")
    ] = "nhwc",
    calibration_samples: Annotated[
        int, option(help="Class-balanced training images used for calibration. Default: 200.", rich_help_panel=INT8)
    ] = 200,
    calibration_method: Annotated[
        str,
        option(
            help="Calibration method: minmax, entropy or percentile (99.999). Default: minmax.", rich_help_panel=INT8
        ),
    ] = "minmax",
    max_accuracy_drop: Annotated[
        float,
        option(
            help="Largest top-1 accuracy loss of a variant against FP32, in percentage points. When int8 misses it, "
            "its layers are ranked by measured sensitivity and the most harmful stay in float, one more per try (at "
            "most 8 re-quantizations) before the export fails. Default: 1.0.",
            rich_help_panel=INT8,
        ),
    ] = 1.0,
    max_class_drop: Annotated[
        Optional[float],
        option(
            help="Also cap the worst class's recall loss against FP32, in percentage points (same float fallback as "
            "--max-accuracy-drop). Default: no per-class limit.",
            rich_help_panel=INT8,
        ),
    ] = None,
    parity_samples: Annotated[
        int, option(help="Validation images used for the parity gate and accuracies (0 = all). Default: 256.")
    ] = 256,
    latency_batch: Annotated[
        int, option(help="The larger batch size of the latency columns (the other is 1). Default: 32.")
    ] = 32,
    verify_samples: Annotated[
        int,
        option(
            help="Class-balanced validation images (with Keras' answers) kept in the folder as verification.npz, so "
            "that edgecnn verify, serve and tune can check the model on the device; at most 32 MB of pixels; 0 = "
            "none. The recommended variant always passes verify on them here. Default: 256 (the --parity-samples "
            "images, where they fit)."
        ),
    ] = 256,
    triton: Annotated[
        Optional[Path],
        option(
            help="Also write a Triton model repository here (DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx) with the "
            "recommended variant; the same as `edgecnn deploy triton MODEL_DIR --out DIR` after the export. "
            "Default: none."
        ),
    ] = None,
    as_json: Annotated[bool, option("--json", help="Print the export report as JSON (for scripts).")] = False,
):
    """Export a trained model to ONNX (FP32 with a parity gate against Keras), plus INT8/FP16 variants."""
    with user_errors(ctx):
        from edgecnn.export import ExportConfig, export as run_export

        config = ExportConfig(
            model_dir=str(model_dir),
            quantize=csv(quantize),
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
        report = run_export(config, log=lambda msg: echo(msg, err=True))
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
    from edgecnn.tables import Table

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
