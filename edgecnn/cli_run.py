"""Run and look at a model on this machine: `edgecnn predict`, `edgecnn profile`, `edgecnn report`
(registered on `edgecnn.cli.app`; thin wrappers over the library).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from edgecnn.errors import EdgecnnError
from edgecnn.cli import app, argument, echo, print_json, user_errors
from edgecnn.cli_options import _FP16_HELP, _ProgressBar, _resolve_model, _with_model_options


@app.command("predict")
@argument(
    "model",
    help="An .onnx model (an edgecnn export, or any image classifier given --image-size), or an export's folder (runs its tuned configuration, else its recommended variant).",
)
@argument(
    "inputs",
    type=str,
    nargs=-1,
    required=True,
    help="Image files and folders (searched recursively). A folder whose subfolders are named like the model's classes also gets accuracy and a confusion matrix. With --ray also globs, .txt files of paths and URIs (s3://...).",
)
@click.option("--batch-size", default=32, help="Images per inference call. Default: 32.")
@click.option("--top-k", default=3, help="Classes reported per image, most probable first. Default: 3.")
@click.option(
    "--format",
    "fmt",
    default="table",
    help="table (for people), json (one JSON object per line per image, then one summary line) or csv. Default: table.",
)
@click.option(
    "--decode-threads",
    type=int,
    default=None,
    help="Threads decoding images while the model runs. Default: logical cores, at most 8.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr. Default: on for 1,000 images or more, or when stderr is a terminal.",
)
@click.option("--fp16/--no-fp16", default=True, help=_FP16_HELP)
@click.option(
    "--ray",
    default=None,
    help='Run on Ray actors (pip install "edgecnn[ray]"): local (start a Ray on this machine and stop it after), auto (this machine\'s cluster) or ray://HOST:PORT. Sources may also be globs and .txt files of paths. Default: no Ray.',
)
@click.option(
    "--ray-actors",
    type=int,
    default=None,
    help="--ray: actors, each holding one model session, sharing the cluster's CPUs equally. Default: one per node, with all of its CPUs.",
)
@click.option("--ray-cpus", type=int, default=None, help="--ray local: CPUs the local Ray may use. Default: all.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="--ray: write one row per image to this .jsonl or .parquet file (atomically) instead of keeping the rows; stdout gets the summary. Default: none.",
)
@_with_model_options
def predict_command(
    model: Path,
    inputs: tuple[str, ...],
    batch_size: int,
    top_k: int,
    fmt: str,
    decode_threads: Optional[int],
    progress: Optional[bool],
    fp16: bool,
    ray: Optional[str],
    ray_actors: Optional[int],
    ray_cpus: Optional[int],
    output: Optional[Path],
    runner,
    foreign,
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
        echo(result.runner_summary, err=True)
        if output is not None:
            echo(f"wrote {result.count} rows to {output}", err=True)
            result = replace(result, rows=result.failures)  # stdout: the summary and the failed images
        write_output(result, fmt, sys.stdout)
        if fmt == "csv":
            for line in summary_lines(result):
                echo(line, err=True)
            if result.confusion is not None:
                echo(confusion_table(result.confusion).render(), err=True)
        if result.failed:
            echo(f"{result.failed} of {result.count} images could not be read", err=True, color="red")
            raise click.exceptions.Exit(2)


def _predict_on_ray(config, address, actors, cpus, output, bar):
    from edgecnn.ray_predict import RayPredictConfig, predict_on_ray

    if address is None:
        raise EdgecnnError("--output needs --ray; plain predict writes rows with --format json > FILE")
    ray_config = RayPredictConfig(config, address=address, output=output, local_cpus=cpus, actors=actors)
    return predict_on_ray(ray_config, progress=bar.update, log=lambda message: echo(message, err=True))


@app.command("profile")
@argument(
    "models",
    nargs=-1,
    required=True,
    help="One or more .onnx models, compared side by side (e.g. model.onnx model_int8.onnx); the first is the speedup baseline. A folder of an export measures its tuned configuration; a lone file of a tuned folder runs with its tuned settings.",
)
@click.option("--batch-sizes", default="1,8,32", help="Comma-separated batch sizes to measure. Default: 1,8,32.")
@click.option("--iterations", default=100, help="Timed runs per batch size (ignored with --seconds). Default: 100.")
@click.option(
    "--seconds",
    type=float,
    default=None,
    help="Time budget in seconds per batch size (and per mode) instead of --iterations. Default: off.",
)
@click.option("--warmup", default=5, help="Untimed warm-up runs per batch size, reported apart. Default: 5.")
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of real images: also measure end to end (decode + preprocess + infer + top-k). Default: model only.",
)
@click.option(
    "--op-profile",
    is_flag=True,
    help="Trace with onnxruntime's profiler at the largest batch size and list the slowest operator types. Default: off.",
)
@click.option("--top-ops", default=10, help="Operator types listed by --op-profile. Default: 10.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the full report (stats, warm-up, machine info, operators, speedups) as JSON to this file. Default: none.",
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=None,
    help="Write an SVG image (the name must end in .svg) of p50 latency and throughput against batch size, "
    "one line per model, to this file. Default: none.",
)
@click.option(
    "--decode-threads",
    type=int,
    default=None,
    help="End to end: threads decoding images while the model runs. Default: logical cores, at most 8.",
)
@_with_model_options
def profile_command(
    models: tuple[Path, ...],
    batch_sizes: str,
    iterations: int,
    seconds: Optional[float],
    warmup: int,
    images: Optional[Path],
    op_profile: bool,
    top_ops: int,
    json_path: Optional[Path],
    plot: Optional[Path],
    decode_threads: Optional[int],
    runner,
    foreign,
):
    """Measure latency (p50/p90/p99), throughput and peak memory per batch size, for one or more models."""
    with user_errors():
        from edgecnn.files import check_writable, write_json
        from edgecnn.profile import ProfileConfig, check_plot_path, profile_models, render, write_plot

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
        if plot is not None:
            check_plot_path(plot)  # an .svg name, before measuring
        for out in (json_path, plot):
            if out is not None:
                check_writable(out)  # before minutes of measuring, not after
        resolved = [_resolve_model(m, runner) for m in models]
        report = profile_models([r.path for r in resolved], config, runners=[r.runner for r in resolved])
        for prof in report.models:  # labels, not file names: two models may both be model.onnx
            note = prof.runner.get("device_note")
            echo(
                f"{prof.label}: ran on {prof.provider} (--device {prof.runner['device']}){'; ' + note if note else ''}",
                err=True,
            )
        render(report, sys.stdout)
        if json_path is not None:
            write_json(json_path, report.to_dict())
            echo(f"wrote {json_path}")
        if plot is not None:
            write_plot(report, plot)
            echo(f"wrote {plot}")


# ==== end profile =========================================================================

# ==== serve (stage 4) =====================================================================


@app.command("report")
@argument(
    "model_dir",
    help="A model folder (models/NAME/ with metadata.json; exports, profile.json and deploy.json are shown when present).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="The HTML file to write. Default: MODEL_DIR/report.html.",
)
@click.option(
    "--profile",
    type=click.Path(path_type=Path),
    default=None,
    help="A profile JSON (edgecnn profile ... --json FILE). Default: MODEL_DIR/profile.json when present.",
)
@click.option(
    "--max-images",
    default=60,
    help="Most misclassified validation images shown as thumbnails, most confident mistakes first. Default: 60.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the report in the default web browser.")
@click.option("--json", "as_json", is_flag=True, help="Print what the report shows as JSON (for scripts).")
def report_command(
    model_dir: Path,
    out: Optional[Path],
    profile: Optional[Path],
    max_images: int,
    open_browser: bool,
    as_json: bool,
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
            if result.verdict is not None:
                learned = result.verdict.learned
                echo(f"training {result.verdict.summary()}", color=None if learned else "red")
            for title, command in result.missing.items():
                echo(f"no {title.lower()} yet: {command}")
            echo(
                f"wrote {result.path} ({result.size_bytes / 1e3:.0f} kB, {result.thumbnails} misclassified images shown)"
            )
        if open_browser:
            import webbrowser

            if not webbrowser.open(result.path.resolve().as_uri()):
                raise EdgecnnError(f"no web browser to open {result.path}; open the file yourself")


# ==== end report ==========================================================================
