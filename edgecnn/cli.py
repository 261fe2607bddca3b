"""`edgecnn` command line: thin commands that parse options and call library functions.

Every command turns an `EdgecnnError` into one red line on stderr and exit code 1.
TensorFlow is imported only inside `train` and `export`, never at import time.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgecnn import __version__
from edgecnn.errors import EdgecnnError

app = typer.Typer(
    name="edgecnn",
    help="Train an image classifier, export it to a fast quantized ONNX model, and run, profile and serve it on a device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextlib.contextmanager
def user_errors():
    """Print an EdgecnnError as one line and exit 1; let bugs raise."""
    try:
        yield
    except EdgecnnError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.RED, err=True)
        raise typer.Exit(130) from None


def print_json(obj) -> None:
    from edgecnn.files import _jsonable

    typer.echo(json.dumps(obj, indent=2, default=_jsonable))


def _version_callback(value: bool):
    if value:
        typer.echo(f"edgecnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
):
    """edgecnn: folder of pictures -> trained Keras model -> quantized ONNX -> predict, profile, serve."""


# ==== datasets / train (stage 1) ==========================================================
def _csv(text: str) -> tuple:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@app.command()
def datasets(
    name: str = typer.Argument(..., help="Built-in dataset: digits (scikit-learn's 1,797 real 8x8 handwritten digit scans)."),
    out_dir: Path = typer.Argument(..., help="Folder to write the class-folder image tree into (OUT_DIR/<class>/<n>.png)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rewrite the tree even if it is already complete."),
):
    """Write a built-in dataset as a folder of class subfolders (no network needed)."""
    with user_errors():
        from edgecnn.datasets import DATASETS

        if name not in DATASETS:
            raise EdgecnnError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        path = DATASETS[name](out_dir, overwrite=overwrite)
        typer.echo(f"wrote {name} to {path}")


@app.command()
def train(
    data_dir: Optional[Path] = typer.Argument(None, help="Folder of class subfolders (DATA/<class>/<image>), or with train/ and val/ subfolders. Default: the built-in digits."),
    model: str = typer.Option("cnn", "--model", help="Architecture: cnn (small configurable CNN) or resnet50 (ImageNet backbone + softmax head)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Input size N or HxW in pixels. Default: the data's median side, capped at 64 (cnn) or 224 (resnet50)."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (grayscale) or 3 (RGB). Default: 1 if every image is grayscale, else 3; resnet50 always 3."),
    epochs: int = typer.Option(20, "--epochs", help="Maximum training epochs (early stopping may end sooner)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per training step."),
    validation_split: float = typer.Option(0.2, "--validation-split", help="Fraction of each class held out for validation (ignored for train/ + val/ folders)."),
    seed: int = typer.Option(1337, "--seed", help="Seed for the split, shuffling, augmentation and initialization."),
    augment: str = typer.Option("", "--augment", help="Comma list applied to the training subset only: hflip, vflip, rotate (+-18 deg), zoom (+-10%). Default: none."),
    learning_rate: float = typer.Option(1e-3, "--learning-rate", help="Adam learning rate."),
    patience: int = typer.Option(5, "--patience", help="Early stopping: epochs without a better validation loss before stopping (best weights kept); 0 turns it off."),
    conv_filters: str = typer.Option("32,64", "--conv-filters", help="cnn: filters per Conv2D block, comma separated; KxF sets a block's kernel, e.g. 5x32,3x64."),
    kernel_size: int = typer.Option(3, "--kernel-size", help="cnn: Conv2D kernel size (square) for blocks without KxF."),
    strides: int = typer.Option(1, "--strides", help="cnn: Conv2D strides."),
    padding: str = typer.Option("same", "--padding", help="cnn: Conv2D padding, valid or same."),
    activation: str = typer.Option("relu", "--activation", help="cnn: Conv2D activation (any Keras activation name)."),
    pool: str = typer.Option("max", "--pool", help="cnn: pooling after each conv block: max, avg or none."),
    pool_size: int = typer.Option(2, "--pool-size", help="cnn: pooling window."),
    pool_strides: Optional[int] = typer.Option(None, "--pool-strides", help="cnn: pooling strides. Default: the pool size."),
    pool_padding: str = typer.Option("valid", "--pool-padding", help="cnn: pooling padding, valid or same."),
    head: str = typer.Option("flatten", "--head", help="cnn: flatten (Flatten + Dense) or gap (GlobalAveragePooling2D)."),
    dense: str = typer.Option("64", "--dense", help="cnn: hidden Dense layer sizes before the softmax, comma separated ('' for none)."),
    dropout: float = typer.Option(0.0, "--dropout", help="Dropout rate after each hidden Dense layer (resnet50: before the head)."),
    weights: str = typer.Option("none", "--weights", help="resnet50 backbone weights: none (random), imagenet (downloaded once by Keras, needs the network) or a PATH to a local .h5 file."),
    fine_tune_layers: int = typer.Option(0, "--fine-tune-layers", help="resnet50: after training the head, unfreeze the top N backbone layers (BatchNorm stays frozen); 0 = no fine-tuning."),
    fine_tune_epochs: int = typer.Option(5, "--fine-tune-epochs", help="resnet50: epochs of the fine-tuning phase."),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, "--fine-tune-learning-rate", help="resnet50: learning rate of the fine-tuning phase. Default: --learning-rate / 10."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first image that cannot be decoded instead of skipping it with a warning."),
    out: Path = typer.Option(Path("models/digits"), "--out", help="Model folder to write (replaced atomically)."),
    distribute: str = typer.Option("none", "--distribute", help="none (one device), mirrored (all local GPUs; one replica on a CPU-only machine) or multiworker (the hosts in the TF_CONFIG environment variable; only the chief writes --out). --batch-size is per replica. Default: none."),
    distribute_timeout: float = typer.Option(120.0, "--distribute-timeout", help="Seconds to wait for the other workers (at start and in each collective step) before failing. Default: 120."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (for scripts)."),
):
    """Train a classifier on a folder of class subfolders (or the built-in digits) and write models/NAME/."""
    with user_errors():
        from edgecnn.models import parse_conv_blocks
        from edgecnn.runtime import parse_image_size
        from edgecnn.train import TrainConfig, train as run_train

        config = TrainConfig(
            data_dir=str(data_dir) if data_dir is not None else None, out=str(out), model=model,
            image_size=None if image_size in (None, "auto") else parse_image_size(image_size), channels=channels, epochs=epochs, batch_size=batch_size,
            validation_split=validation_split, seed=seed, augment=_csv(augment), learning_rate=learning_rate,
            early_stopping_patience=patience, strict=strict,
            conv_blocks=parse_conv_blocks(conv_filters, kernel_size, strides, padding, activation),
            pool=pool, pool_size=pool_size, pool_strides=pool_strides, pool_padding=pool_padding, head=head,
            dense=tuple(int(d) for d in _csv(dense)), dropout=dropout, weights=weights,
            fine_tune_layers=fine_tune_layers, fine_tune_epochs=fine_tune_epochs,
            fine_tune_learning_rate=fine_tune_learning_rate, verbose=2 if as_json else None,
            distribute=distribute, distribute_timeout_s=distribute_timeout,
        )
        log = (lambda msg: typer.echo(msg, err=True)) if as_json else typer.echo
        result = run_train(config, log=log)
        if as_json:
            print_json(result.summary())
            return
        typer.secho(f"validation accuracy {result.val_accuracy:.2%} (best epoch {result.best_val_accuracy:.2%}), "
                    f"{result.epochs_run} epochs in {result.seconds:.0f} s", fg=typer.colors.GREEN)
        if not result.wrote_model:
            typer.echo(f"not the chief: the chief writes {result.out_dir}/ (this worker's copy was removed)")
            return
        typer.echo(f"wrote {result.out_dir}/: model.keras, metadata.json, classes.txt, training_curves.png, confusion_matrix.png")
        typer.echo(f"next: edgecnn export {result.out_dir} --quantize int8")
# ==== end datasets / train ================================================================

# ==== export (stage 2) ====================================================================
@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="A trained model folder (models/NAME/ with model.keras and metadata.json)."),
    quantize: str = typer.Option("", "--quantize", help="Comma list of extra variants: int8 (static, calibrated, for CPUs), fp16 (for GPUs), auto (build int8, and fp16 where a GPU is present, measure, recommend the fastest within the accuracy budget). FP32 is always built."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of class subfolders for parity checks and calibration. Default: the training folder recorded in metadata.json (its validation subset checks, its training subset calibrates)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset of the exported graph."),
    input_dtype: str = typer.Option("uint8", "--input-dtype", help="Model input type: uint8 (raw pixels, smallest transfers) or float32 (raw 0-255 pixels as floats)."),
    layout: str = typer.Option("nhwc", "--layout", help="Model input layout: nhwc (images as decoded) or nchw."),
    calibration_samples: int = typer.Option(200, "--calibration-samples", help="int8: class-balanced training images used for calibration."),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="int8: calibration method: minmax, entropy or percentile (99.999)."),
    max_accuracy_drop: float = typer.Option(1.0, "--max-accuracy-drop", help="Largest top-1 accuracy loss of a variant against FP32, in percentage points; int8 tries float fallbacks before failing."),
    parity_samples: int = typer.Option(256, "--parity-samples", help="Validation images used for the parity gate and accuracies (0 = all)."),
    latency_batch: int = typer.Option(32, "--latency-batch", help="The larger batch size of the latency columns (the other is 1)."),
    verify_samples: int = typer.Option(64, "--verify-samples", help="Class-balanced validation images (with Keras' answers) kept in the folder as verification.npz, so that edgecnn verify and tune can check the model on the device; at most 32 MB of pixels; 0 = none. Default: 64."),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Also write a Triton model repository here (DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx) with the recommended variant; the same as `edgecnn deploy triton MODEL_DIR --out DIR` after the export."),
    as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON (for scripts)."),
):
    """Export a trained model to ONNX (FP32 with a parity gate against Keras), plus INT8/FP16 variants."""
    with user_errors():
        from edgecnn.export import ExportConfig, export as run_export

        config = ExportConfig(
            model_dir=str(model_dir), quantize=_csv(quantize), data_dir=str(data) if data else None, opset=opset,
            input_dtype=input_dtype, layout=layout, calibration_samples=calibration_samples,
            calibration_method=calibration_method, max_accuracy_drop=max_accuracy_drop, parity_samples=parity_samples,
            latency_batch=latency_batch, triton=str(triton) if triton else None, verify_samples=verify_samples,
        )
        log = (lambda msg: typer.echo(msg, err=True))
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
    table = Table(title=f"export of {report.model_dir} (Keras accuracy {report.keras_accuracy:.2%} on {report.images} images)")
    for col in ("variant", "MB", "accuracy", "=Keras", "max|dp|", "ms b=1", f"ms/img b={n}", "best"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in report.variants:
        table.add_row(v.variant, f"{v.size_bytes / 1e6:.2f}", f"{v.accuracy:.2%}", f"{v.keras_agreement:.2%}",
                      f"{v.max_prob_diff:.1e}", f"{v.latency_ms_b1:.3f}", f"{v.latency_ms_bn:.3f}", "yes" if v.recommended else "")
    Console().print(table)
    if report.nodes_in_float:
        typer.echo(f"int8 kept in float: {', '.join(report.nodes_in_float)}")
# ==== end export ==========================================================================

# ==== predict (stage 3) ===================================================================
_DEVICE_HELP = ("Where to run: auto (CUDA if it works, else CPU; says which ran), cpu, cuda or cuda:N, openvino or "
                "openvino:CPU|GPU|NPU (the openvino extra), tensorrt. A missing provider fails clearly, never falls back. "
                "Default: auto, or the tuned configuration of the model's folder (edgecnn tune).")
_EP_OPTION_HELP = ("A setting of the chosen execution provider, KEY=VALUE, repeatable. openvino: precision=f32|bf16|f16|device "
                   "(default f32), hint=LATENCY|THROUGHPUT, streams=N; tensorrt: trt_fp16_enable=True. Default: none.")
_THREADS_HELP = "onnxruntime intra-op CPU threads. Default: the number of physical cores."
_GRAPH_OPT_HELP = "onnxruntime graph optimization level: disable, basic, extended or all. Default: all."
_IO_BINDING_HELP = "Bind inputs and outputs to the device (IOBinding). Default: on for CUDA, off for CPU."
_CUDNN_HELP = "CUDA only: cuDNN convolution algorithm search: EXHAUSTIVE (slow first run, fastest after), HEURISTIC or DEFAULT. Default: EXHAUSTIVE."
_FOREIGN_NOTE = "Only for an ONNX model without edgecnn metadata (ignored otherwise)."
_FP16_HELP = "CUDA only: given an export's model.onnx, run its FP16 variant (model.fp16.onnx) when there is one; says so. Default: on."


# The options of every command that runs a model, declared once (see `_with_model_options`):
# (parameter name, type, typer option).
_RUNNER_OPTIONS = (
    ("device", str, typer.Option("auto", "--device", help=_DEVICE_HELP)),
    ("threads", Optional[int], typer.Option(None, "--threads", help=_THREADS_HELP)),
    ("graph_optimization", str, typer.Option("all", "--graph-optimization", help=_GRAPH_OPT_HELP)),
    ("io_binding", Optional[bool], typer.Option(None, "--io-binding/--no-io-binding", help=_IO_BINDING_HELP)),
    ("cudnn_algo_search", str, typer.Option("EXHAUSTIVE", "--cudnn-algo-search", help=_CUDNN_HELP)),
    ("ep_option", Optional[List[str]], typer.Option(None, "--ep-option", help=_EP_OPTION_HELP)),
)
# CLI option -> the RunnerConfig field it sets (to tell what the user typed from defaults).
_RUNNER_FIELDS = {"device": "device", "threads": "intra_op_threads", "graph_optimization": "graph_optimization",
                  "io_binding": "io_binding", "cudnn_algo_search": "cudnn_conv_algo_search", "ep_option": "ep_options",
                  "spin": "allow_spinning"}


def _explicit_runner_fields() -> frozenset:
    """The RunnerConfig fields whose options were typed on the command line (they beat a tuned configuration)."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on click
        from click import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return frozenset()
    sources = {option: ctx.get_parameter_source(option) for option in _RUNNER_FIELDS}
    return frozenset(_RUNNER_FIELDS[option] for option, source in sources.items()
                     if source is not None and source.name != "DEFAULT")


def _resolve_model(model: Path, runner, also_explicit: frozenset = frozenset()):
    """A model folder or file -> (file, runner config) with the folder's tuned configuration applied; says so on stderr."""
    from edgecnn.tuned import resolve

    resolved = resolve(model, runner, _explicit_runner_fields() | also_explicit)
    if resolved.note:
        typer.secho(resolved.note, err=True, fg=typer.colors.YELLOW if resolved.warning else None)
    return resolved


_FOREIGN_OPTIONS = (
    ("image_size", Optional[str], typer.Option(None, "--image-size", help=f"Model input size HxW in pixels, e.g. 224x224. {_FOREIGN_NOTE}")),
    ("channels", Optional[int], typer.Option(None, "--channels", help=f"1 (grayscale) or 3 (RGB). Default: read from the model's input shape. {_FOREIGN_NOTE}")),
    ("classes", Optional[str], typer.Option(None, "--classes", help=f"Class names a,b,c or a text file with one per line. Default: 0, 1, ... {_FOREIGN_NOTE}")),
    ("layout", Optional[str], typer.Option(None, "--layout", help=f"Input layout nhwc or nchw. Default: guessed from the model's input shape. {_FOREIGN_NOTE}")),
    ("input_dtype", Optional[str], typer.Option(None, "--input-dtype", help=f"uint8 or float32 (raw 0-255 pixels either way). Default: the model's input type. {_FOREIGN_NOTE}")),
)


def _with_model_options(command):
    """Add the runner and foreign-model options to a typer command.

    The command declares `runner` and `foreign` parameters instead of ten options, and gets a
    `RunnerConfig` and a `ForeignModelSettings` built from what the user typed (a bad value
    is a one-line error, as everywhere).
    """
    import functools
    import inspect

    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name not in ("runner", "foreign")]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, kind, option in _RUNNER_OPTIONS + _FOREIGN_OPTIONS]

    @functools.wraps(command)
    def with_options(**kwargs):
        runner_values = [kwargs.pop(name) for name, _, _ in _RUNNER_OPTIONS]
        foreign_values = [kwargs.pop(name) for name, _, _ in _FOREIGN_OPTIONS]
        with user_errors():
            runner, foreign = _runner_config(*runner_values), _foreign_settings(*foreign_values)
        return command(runner=runner, foreign=foreign, **kwargs)

    with_options.__signature__ = signature.replace(parameters=own + added)
    return with_options


def _runner_config(device: str, threads: Optional[int], graph_optimization: str, io_binding: Optional[bool],
                   cudnn_algo_search: str, ep_option: Optional[List[str]] = None):
    from edgecnn.providers import parse_ep_options
    from edgecnn.runtime import RunnerConfig

    return RunnerConfig(device=device, intra_op_threads=threads, graph_optimization=graph_optimization,
                        io_binding=io_binding, cudnn_conv_algo_search=cudnn_algo_search.upper(),
                        ep_options=parse_ep_options(ep_option))


def _foreign_settings(image_size: Optional[str], channels: Optional[int], classes: Optional[str],
                      layout: Optional[str], input_dtype: Optional[str]):
    from edgecnn.runtime import ForeignModelSettings, parse_class_names, parse_image_size

    if layout is not None and layout not in ("nhwc", "nchw"):
        raise EdgecnnError(f"--layout {layout}: expected nhwc or nchw")
    if input_dtype is not None and input_dtype not in ("uint8", "float32"):
        raise EdgecnnError(f"--input-dtype {input_dtype}: expected uint8 or float32")
    return ForeignModelSettings(
        image_size=parse_image_size(image_size) if image_size else None, channels=channels,
        class_names=parse_class_names(classes) if classes else None, layout=layout, input_dtype=input_dtype,
    )


@app.command("predict")
@_with_model_options
def predict_command(
    model: Path = typer.Argument(..., help="An .onnx model (an edgecnn export, or any image classifier given --image-size), or an export's folder (runs its tuned configuration, else its recommended variant)."),
    inputs: List[str] = typer.Argument(..., help="Image files and folders (searched recursively). A folder whose subfolders are named like the model's classes also gets accuracy and a confusion matrix. With --ray also globs, .txt files of paths and URIs (s3://...)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per inference call. Default: 32."),
    top_k: int = typer.Option(3, "--top-k", help="Classes reported per image, most probable first. Default: 3."),
    fmt: str = typer.Option("table", "--format", help="table (for people), json (one JSON object per line per image, then one summary line) or csv. Default: table."),
    decode_threads: Optional[int] = typer.Option(None, "--decode-threads", help="Threads decoding images while the model runs. Default: logical cores, at most 8."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr. Default: on for 1,000 images or more, or when stderr is a terminal."),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help=_FP16_HELP),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run as a Ray Data pipeline (pip install \"edgecnn[ray]\"): local (start a Ray on this machine and stop it after), auto (this machine's cluster) or ray://HOST:PORT. Sources may also be globs and .txt files of paths. Default: no Ray."),
    ray_actors: Optional[int] = typer.Option(None, "--ray-actors", help="--ray: actors, each holding one model session. Default: the cluster's CPUs."),
    ray_cpus: Optional[int] = typer.Option(None, "--ray-cpus", help="--ray local: CPUs the local Ray may use. Default: all."),
    output: Optional[Path] = typer.Option(None, "--output", help="--ray: write one row per image to this .jsonl or .parquet file (atomically) instead of keeping the rows; stdout gets the summary. Default: none."),
    runner=None,
    foreign=None,
):
    """Classify images with an ONNX model; exit code 2 when some images could not be read."""
    with user_errors():
        from dataclasses import replace

        from edgecnn.predict import OUTPUT_FORMATS, PredictConfig, confusion_table, predict as run_predict, summary_lines, write_output

        if fmt not in OUTPUT_FORMATS:
            raise EdgecnnError(f"--format {fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
        resolved = _resolve_model(model, runner)
        model, runner = resolved.path, resolved.runner
        config = PredictConfig(
            model=model, inputs=tuple(i if "://" in i else Path(i) for i in inputs), batch_size=batch_size, top_k=top_k,
            runner=replace(runner, prefer_fp16=fp16), foreign=foreign,
            decode_workers=decode_threads,
        )
        bar = _ProgressBar(progress)
        try:
            if ray is None and output is None:
                result = run_predict(config, progress=bar.update)
            else:
                result = _predict_on_ray(config, ray, ray_actors, ray_cpus, output, bar)
        finally:
            bar.close()
        typer.echo(result.runner_summary, err=True)
        if output is not None:
            typer.echo(f"wrote {result.count} rows to {output}", err=True)
            result = replace(result, rows=result.failures)  # stdout: the summary and the failed images
        write_output(result, fmt, sys.stdout)
        if fmt == "csv":
            from rich.console import Console

            err = Console(stderr=True)
            for line in summary_lines(result):
                err.print(line, highlight=False)
            if result.confusion is not None:
                err.print(confusion_table(result.confusion))
        if result.failed:
            typer.secho(f"{result.failed} of {result.count} images could not be read", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)


def _predict_on_ray(config, address, actors, cpus, output, bar):
    from edgecnn.ray_predict import RayPredictConfig, predict_on_ray

    if address is None:
        raise EdgecnnError("--output needs --ray; plain predict writes rows with --format json > FILE")
    ray_config = RayPredictConfig(config, address=address, output=output, local_cpus=cpus, actors=actors)
    return predict_on_ray(ray_config, progress=bar.update, log=lambda message: typer.echo(message, err=True))


class _ProgressBar:
    """A rich progress bar on stderr, started once the number of images is known."""

    LARGE = 1000

    def __init__(self, wanted: Optional[bool]):
        self.wanted, self.bar, self.task = wanted, None, None

    def update(self, done: int, total: int) -> None:
        if self.wanted is None:
            self.wanted = total >= self.LARGE or sys.stderr.isatty()
        if not self.wanted:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("predict", total=total)
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
# ==== end predict =========================================================================

# ==== profile (stage 3) ===================================================================
@app.command("profile")
@_with_model_options
def profile_command(
    models: List[Path] = typer.Argument(..., help="One or more .onnx models, compared side by side (e.g. model.onnx model_int8.onnx); the first is the speedup baseline. A folder of an export measures its tuned configuration; a lone file of a tuned folder runs with its tuned settings."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes to measure. Default: 1,8,32."),
    iterations: int = typer.Option(100, "--iterations", help="Timed runs per batch size (ignored with --seconds). Default: 100."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time budget in seconds per batch size (and per mode) instead of --iterations. Default: off."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed warm-up runs per batch size, reported apart. Default: 5."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of real images: also measure end to end (decode + preprocess + infer + top-k). Default: model only."),
    op_profile: bool = typer.Option(False, "--op-profile", help="Trace with onnxruntime's profiler at the largest batch size and list the slowest operator types. Default: off."),
    top_ops: int = typer.Option(10, "--top-ops", help="Operator types listed by --op-profile. Default: 10."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report (stats, warm-up, machine info, operators, speedups) as JSON to this file. Default: none."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of p50 latency and throughput against batch size to this file. Default: none."),
    decode_threads: Optional[int] = typer.Option(None, "--decode-threads", help="End to end: threads decoding images while the model runs. Default: logical cores, at most 8."),
    runner=None,
    foreign=None,
):
    """Measure latency (p50/p90/p99), throughput and peak memory per batch size, for one or more models."""
    with user_errors():
        from rich.console import Console

        from edgecnn.files import check_writable, write_json
        from edgecnn.profile import ProfileConfig, profile_models, render, write_plot
        from edgecnn.predict import wide_console_width

        try:
            sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
        except ValueError:
            raise EdgecnnError(f"--batch-sizes {batch_sizes}: expected comma-separated integers such as 1,8,32") from None
        config = ProfileConfig(
            batch_sizes=sizes, iterations=iterations, seconds=seconds, warmup=warmup, images=images,
            op_profile=op_profile, top_ops=top_ops, decode_workers=decode_threads, runner=runner, foreign=foreign,
        )
        for out in (json_path, plot):
            if out is not None:
                check_writable(out)  # before minutes of measuring, not after
        if plot is not None:
            from edgecnn.plots import require_matplotlib

            require_matplotlib()  # says which extra to install, before measuring
        resolved = [_resolve_model(m, runner) for m in models]
        report = profile_models([r.path for r in resolved], config, runners=[r.runner for r in resolved])
        for prof in report.models:  # labels, not file names: two models may both be model.onnx
            note = prof.runner.get("device_note")
            typer.echo(f"{prof.label}: ran on {prof.provider} (--device {prof.runner['device']}){'; ' + note if note else ''}", err=True)
        render(report, Console(width=wide_console_width(sys.stdout)))
        if json_path is not None:
            write_json(json_path, report.to_dict())
            typer.echo(f"wrote {json_path}")
        if plot is not None:
            write_plot(report, plot)
            typer.echo(f"wrote {plot}")
# ==== end profile =========================================================================

# ==== serve (stage 4) =====================================================================
def _serve_defaults():
    from edgecnn.serve import ServeConfig  # no TensorFlow, no onnxruntime: safe at import

    return ServeConfig()


_SERVE = _serve_defaults()


@app.command("serve")
def serve_command(
    model: Path = typer.Argument(..., help="The .onnx model to serve, e.g. models/NAME/model.int8.onnx, or an export's folder (serves its tuned configuration, else its recommended variant)."),
    host: str = typer.Option(_SERVE.host, help="Address to listen on; default 127.0.0.1 (this machine only). 0.0.0.0 opens it to the network."),
    port: int = typer.Option(_SERVE.port, help="TCP port; default 8000; 0 picks a free one."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    ep_option: Optional[List[str]] = typer.Option(None, "--ep-option", help=_EP_OPTION_HELP),
    name: Optional[str] = typer.Option(None, help="The model's name in URLs (/v2/models/NAME); default: the model file's folder name."),
    max_batch_size: int = typer.Option(_SERVE.max_batch_size, help="Most rows (images) per model run; default 32; 1 turns batching off."),
    max_queue_delay_ms: float = typer.Option(_SERVE.max_queue_delay_ms, help="Longest time in milliseconds a request waits for others to batch with; default 2."),
    max_queue: int = typer.Option(_SERVE.max_queue, help="Requests allowed to wait; more are answered 503 with Retry-After; default 256."),
    no_batching: bool = typer.Option(False, "--no-batching", help="Run every request alone (same as --max-batch-size 1)."),
    max_body_bytes: int = typer.Option(_SERVE.max_body_bytes, help="Largest request body in bytes (after decompression); larger get 413; default 16777216 (16 MiB)."),
    max_pixels: int = typer.Option(_SERVE.max_pixels, help="Largest image in pixels (width x height) /classify decodes; larger get 413; default 16000000."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads; default: the physical CPU cores."),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help=_FP16_HELP),
    spin: bool = typer.Option(False, "--spin/--no-spin", help="Let idle onnxruntime threads busy-wait for the next run: faster for one request at a time without batching, slower when the HTTP server needs the cores; default off."),
    decode_threads: int = typer.Option(_SERVE.decode_threads, help="Threads decoding images for /classify; default 2."),
    shutdown_timeout: float = typer.Option(_SERVE.shutdown_timeout_s, help="Seconds to let in-flight requests finish after SIGTERM/SIGINT; default 30."),
    drain_delay: float = typer.Option(_SERVE.drain_delay_s, help="Seconds after SIGTERM during which /ready and new inference requests answer 503 (so a load balancer stops sending) before the listener closes; within --shutdown-timeout; SIGINT stops at once. Default 1."),
    log_level: str = typer.Option("warning", help="uvicorn log level: critical, error, warning (default), info, debug."),
    max_request_rows: int = typer.Option(_SERVE.max_request_rows, help="Most rows (images) one /infer request may send; more get 413; default 256."),
    max_connections: int = typer.Option(_SERVE.max_connections, help="Most open connections; the next is answered 503 and closed; default 256."),
    max_header_bytes: int = typer.Option(_SERVE.max_header_bytes, help="Largest request line + headers in bytes; larger get 431; default 16384."),
    header_timeout: float = typer.Option(_SERVE.header_timeout_s, help="Seconds from connecting (or a request's first byte) to the end of its headers; slower get 408; default 10."),
    body_timeout: float = typer.Option(_SERVE.body_timeout_s, help="Seconds from the end of the headers to the end of the body; slower get 408; default 30."),
    max_inflight_bytes: int = typer.Option(_SERVE.max_inflight_bytes, help="Bytes all requests being read, queued or run may hold together (bodies, decompressed bodies, tensors); over it 503 + Retry-After; default 268435456 (256 MiB)."),
    allowed_hosts: Optional[list[str]] = typer.Option(None, "--allowed-hosts", help="Host header value (without port) to accept besides localhost, 127.0.0.1, ::1 and --host; repeat it; '*' accepts any. Guards against DNS rebinding."),
    no_ui: bool = typer.Option(False, "--no-ui", help="No try-it page at GET / (then /, like any unknown path, answers 404). Default: the page is on."),
):
    """Serve a model over HTTP: KServe v2 / Open Inference Protocol, dynamic batching, /metrics."""
    with user_errors():
        from edgecnn.providers import parse_ep_options
        from edgecnn.runtime import RunnerConfig
        from edgecnn.serve import ServeConfig, serve

        config = ServeConfig(
            host=host, port=port, name=name, device=device, max_batch_size=1 if no_batching else max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue, max_body_bytes=max_body_bytes,
            max_pixels=max_pixels, threads=threads, allow_spinning=spin, prefer_fp16=fp16, decode_threads=decode_threads,
            shutdown_timeout_s=shutdown_timeout, drain_delay_s=drain_delay, log_level=log_level, max_request_rows=max_request_rows,
            max_connections=max_connections, max_header_bytes=max_header_bytes, header_timeout_s=header_timeout,
            body_timeout_s=body_timeout, max_inflight_bytes=max_inflight_bytes, allowed_hosts=tuple(allowed_hosts or ()), ui=not no_ui,
        )

        def ready(info):
            batching = "off" if info.max_batch_size == 1 else f"up to {info.max_batch_size} rows"
            typer.echo(f"serving {info.model_name} on {info.provider} at {info.url}/v2/models/{info.model_name} "
                       f"(batching {batching}; {info.http_stack}; ready in {info.startup_seconds:.2f} s)")
            if not no_ui:
                typer.echo(f"try it in a browser: {info.url}/")
            sys.stdout.flush()

        base = RunnerConfig(device=device, intra_op_threads=threads, allow_spinning=spin, prefer_fp16=fp16,
                            ep_options=parse_ep_options(ep_option))
        # The server keeps its own thread spinning (off: the HTTP loop shares the cores) unless --spin is typed.
        resolved = _resolve_model(model, base, also_explicit=frozenset({"allow_spinning"}))
        serve(resolved.path, config, on_ready=ready, runner_config=resolved.runner)


# ==== end serve ===========================================================================

# ==== report ==============================================================================
@app.command("report")
def report_command(
    model_dir: Path = typer.Argument(..., help="A model folder (models/NAME/ with metadata.json; exports, profile.json and deploy.json are shown when present)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The HTML file to write. Default: MODEL_DIR/report.html."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="A profile JSON (edgecnn profile ... --json FILE). Default: MODEL_DIR/profile.json when present."),
    max_images: int = typer.Option(60, "--max-images", help="Most misclassified validation images shown as thumbnails, most confident mistakes first. Default: 60."),
    open_browser: bool = typer.Option(False, "--open", help="Open the report in the default web browser."),
    as_json: bool = typer.Option(False, "--json", help="Print what the report shows as JSON (for scripts)."),
):
    """Write one self-contained HTML page: data, curves, confusion matrix, mistakes, exports, profile, tuning."""
    with user_errors():
        from edgecnn.report import ReportConfig, write_report

        result = write_report(ReportConfig(model_dir=str(model_dir), out=str(out) if out else None,
                                           profile=str(profile) if profile else None, max_thumbnails=max_images))
        if as_json:
            print_json(result.to_dict())
        else:
            for title, command in result.missing.items():
                typer.echo(f"no {title.lower()} yet: {command}")
            typer.echo(f"wrote {result.path} ({result.size_bytes / 1e3:.0f} kB, {result.thumbnails} misclassified images shown)")
        if open_browser:
            import webbrowser

            if not webbrowser.open(result.path.resolve().as_uri()):
                raise EdgecnnError(f"no web browser to open {result.path}; open the file yourself")
# ==== end report ==========================================================================


from edgecnn import cli_device  # noqa: E402,F401  (registers verify and tune on `app`)


# ==== deploy (stage 5) ====================================================================
deploy_app = typer.Typer(help="Write what a fleet needs to serve an exported model: KServe (image + InferenceService) or Triton (model repository).",
                         no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")
_VARIANT_HELP = "Which exported file: fp32, int8 or fp16. Default: the variant `edgecnn export` recommended (else model.onnx)."


@deploy_app.command("kserve")
def deploy_kserve_command(
    model_dir: Path = typer.Argument(..., help="An exported model folder (models/NAME/ with model.onnx and its variants)."),
    image: str = typer.Option(..., "--image", help="Image reference to build and push, e.g. registry.example.com/team/digits:1."),
    name: Optional[str] = typer.Option(None, "--name", help="InferenceService name and model name in URLs. Default: the model folder's name."),
    gpu: bool = typer.Option(False, "--gpu", help="Install edgecnn[gpu], serve with --device cuda and request one nvidia.com/gpu. Default: CPU."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write (replaced atomically). Default: MODEL_DIR/kserve."),
    variant: Optional[str] = typer.Option(None, "--variant", help=_VARIANT_HELP),
    cpu: str = typer.Option("1", "--cpu", help="CPU request of the predictor (Kubernetes quantity; the limit is twice it). Default: 1."),
    memory: str = typer.Option("1Gi", "--memory", help="Memory request and limit of the predictor. Default: 1Gi."),
):
    """Write a Dockerfile and a KServe InferenceService (v1beta1, v2 protocol) for an exported model."""
    with user_errors():
        from edgecnn.deploy import KServeConfig, deploy_kserve

        files = deploy_kserve(KServeConfig(model_dir=model_dir, image=image, out=out, name=name, gpu=gpu, variant=variant,
                                           cpu=cpu, memory=memory))
        typer.echo(f"wrote {files.dockerfile}, {files.manifest} and {files.model}")
        typer.echo(f"next: docker build -t {image} {files.out} && docker push {image}")
        typer.echo(f"      kubectl apply -f {files.manifest}")


@deploy_app.command("triton")
def deploy_triton_command(
    model_dir: Path = typer.Argument(..., help="An exported model folder (models/NAME/ with model.onnx and its variants)."),
    out: Path = typer.Option(..., "--out", help="Triton model repository to write into (OUT/NAME/config.pbtxt, labels.txt, 1/model.onnx)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the repository. Default: the model folder's name."),
    variant: Optional[str] = typer.Option(None, "--variant", help=_VARIANT_HELP),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Triton's max_batch_size (dynamic batching). Default: 32."),
):
    """Write a Triton Inference Server model repository (onnxruntime backend) for an exported model."""
    with user_errors():
        from edgecnn.triton import deploy_triton

        folder = deploy_triton(model_dir, out, name=name, variant=variant, max_batch_size=max_batch_size)
        typer.echo(f"wrote Triton model repository {folder}")
        typer.echo(f"next: tritonserver --model-repository {out}")
# ==== end deploy ==========================================================================


def main() -> None:
    app()


if __name__ == "__main__":
    main()
