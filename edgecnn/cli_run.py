"""Run and look at a model on this machine: `edgecnn predict`, `edgecnn profile`, `edgecnn report`
(registered on `edgecnn.cli.app`; thin wrappers over the library).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgecnn.errors import EdgecnnError
from edgecnn.cli import app, print_json, user_errors
from edgecnn.cli_options import _FP16_HELP, _ProgressBar, _resolve_model, _with_model_options


@app.command("predict")
@_with_model_options
def predict_command(
    model: Path = typer.Argument(
        ...,
        help="An .onnx model (an edgecnn export, or any image classifier given --image-size), or an export's folder (runs its tuned configuration, else its recommended variant).",
    ),
    inputs: List[str] = typer.Argument(
        ...,
        help="Image files and folders (searched recursively). A folder whose subfolders are named like the model's classes also gets accuracy and a confusion matrix. With --ray also globs, .txt files of paths and URIs (s3://...).",
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per inference call. Default: 32."),
    top_k: int = typer.Option(3, "--top-k", help="Classes reported per image, most probable first. Default: 3."),
    fmt: str = typer.Option(
        "table",
        "--format",
        help="table (for people), json (one JSON object per line per image, then one summary line) or csv. Default: table.",
    ),
    decode_threads: Optional[int] = typer.Option(
        None,
        "--decode-threads",
        help="Threads decoding images while the model runs. Default: logical cores, at most 8.",
    ),
    progress: Optional[bool] = typer.Option(
        None,
        "--progress/--no-progress",
        help="Progress bar on stderr. Default: on for 1,000 images or more, or when stderr is a terminal.",
    ),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help=_FP16_HELP),
    ray: Optional[str] = typer.Option(
        None,
        "--ray",
        help='Run as a Ray Data pipeline (pip install "edgecnn[ray]"): local (start a Ray on this machine and stop it after), auto (this machine\'s cluster) or ray://HOST:PORT. Sources may also be globs and .txt files of paths. Default: no Ray.',
    ),
    ray_actors: Optional[int] = typer.Option(
        None, "--ray-actors", help="--ray: actors, each holding one model session. Default: the cluster's CPUs."
    ),
    ray_cpus: Optional[int] = typer.Option(
        None, "--ray-cpus", help="--ray local: CPUs the local Ray may use. Default: all."
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        help="--ray: write one row per image to this .jsonl or .parquet file (atomically) instead of keeping the rows; stdout gets the summary. Default: none.",
    ),
    runner=None,
    foreign=None,
):
    """Classify images with an ONNX model; exit code 2 when some images could not be read."""
    with user_errors():
        from dataclasses import replace

        from edgecnn.predict import (
            OUTPUT_FORMATS,
            PredictConfig,
            confusion_table,
            predict as run_predict,
            summary_lines,
            write_output,
        )

        if fmt not in OUTPUT_FORMATS:
            raise EdgecnnError(f"--format {fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
        resolved = _resolve_model(model, runner)
        model, runner = resolved.path, resolved.runner
        config = PredictConfig(
            model=model,
            inputs=tuple(i if "://" in i else Path(i) for i in inputs),
            batch_size=batch_size,
            top_k=top_k,
            runner=replace(runner, prefer_fp16=fp16),
            foreign=foreign,
            decode_threads=decode_threads,
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


@app.command("profile")
@_with_model_options
def profile_command(
    models: List[Path] = typer.Argument(
        ...,
        help="One or more .onnx models, compared side by side (e.g. model.onnx model_int8.onnx); the first is the speedup baseline. A folder of an export measures its tuned configuration; a lone file of a tuned folder runs with its tuned settings.",
    ),
    batch_sizes: str = typer.Option(
        "1,8,32", "--batch-sizes", help="Comma-separated batch sizes to measure. Default: 1,8,32."
    ),
    iterations: int = typer.Option(
        100, "--iterations", help="Timed runs per batch size (ignored with --seconds). Default: 100."
    ),
    seconds: Optional[float] = typer.Option(
        None,
        "--seconds",
        help="Time budget in seconds per batch size (and per mode) instead of --iterations. Default: off.",
    ),
    warmup: int = typer.Option(5, "--warmup", help="Untimed warm-up runs per batch size, reported apart. Default: 5."),
    images: Optional[Path] = typer.Option(
        None,
        "--images",
        help="Folder of real images: also measure end to end (decode + preprocess + infer + top-k). Default: model only.",
    ),
    op_profile: bool = typer.Option(
        False,
        "--op-profile",
        help="Trace with onnxruntime's profiler at the largest batch size and list the slowest operator types. Default: off.",
    ),
    top_ops: int = typer.Option(10, "--top-ops", help="Operator types listed by --op-profile. Default: 10."),
    json_path: Optional[Path] = typer.Option(
        None,
        "--json",
        help="Write the full report (stats, warm-up, machine info, operators, speedups) as JSON to this file. Default: none.",
    ),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Write a PNG of p50 latency and throughput against batch size to this file. Default: none."
    ),
    decode_threads: Optional[int] = typer.Option(
        None,
        "--decode-threads",
        help="End to end: threads decoding images while the model runs. Default: logical cores, at most 8.",
    ),
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
            raise EdgecnnError(
                f"--batch-sizes {batch_sizes}: expected comma-separated integers such as 1,8,32"
            ) from None
        config = ProfileConfig(
            batch_sizes=sizes,
            iterations=iterations,
            seconds=seconds,
            warmup=warmup,
            images=images,
            op_profile=op_profile,
            top_ops=top_ops,
            decode_threads=decode_threads,
            runner=runner,
            foreign=foreign,
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
            typer.echo(
                f"{prof.label}: ran on {prof.provider} (--device {prof.runner['device']}){'; ' + note if note else ''}",
                err=True,
            )
        render(report, Console(width=wide_console_width(sys.stdout)))
        if json_path is not None:
            write_json(json_path, report.to_dict())
            typer.echo(f"wrote {json_path}")
        if plot is not None:
            write_plot(report, plot)
            typer.echo(f"wrote {plot}")


# ==== end profile =========================================================================

# ==== serve (stage 4) =====================================================================


@app.command("report")
def report_command(
    model_dir: Path = typer.Argument(
        ...,
        help="A model folder (models/NAME/ with metadata.json; exports, profile.json and deploy.json are shown when present).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="The HTML file to write. Default: MODEL_DIR/report.html."),
    profile: Optional[Path] = typer.Option(
        None,
        "--profile",
        help="A profile JSON (edgecnn profile ... --json FILE). Default: MODEL_DIR/profile.json when present.",
    ),
    max_images: int = typer.Option(
        60,
        "--max-images",
        help="Most misclassified validation images shown as thumbnails, most confident mistakes first. Default: 60.",
    ),
    open_browser: bool = typer.Option(False, "--open", help="Open the report in the default web browser."),
    as_json: bool = typer.Option(False, "--json", help="Print what the report shows as JSON (for scripts)."),
):
    """Write one self-contained HTML page: data, curves, confusion matrix, mistakes, exports, profile, tuning."""
    with user_errors():
        from edgecnn.report import ReportConfig, write_report

        result = write_report(
            ReportConfig(
                model_dir=str(model_dir),
                out=str(out) if out else None,
                profile=str(profile) if profile else None,
                max_thumbnails=max_images,
            )
        )
        if as_json:
            print_json(result.to_dict())
        else:
            for title, command in result.missing.items():
                typer.echo(f"no {title.lower()} yet: {command}")
            typer.echo(
                f"wrote {result.path} ({result.size_bytes / 1e3:.0f} kB, {result.thumbnails} misclassified images shown)"
            )
        if open_browser:
            import webbrowser

            if not webbrowser.open(result.path.resolve().as_uri()):
                raise EdgecnnError(f"no web browser to open {result.path}; open the file yourself")


# ==== end report ==========================================================================
