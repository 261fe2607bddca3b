"""Stage 3 on the device: `edgecnn predict` (classify images) and `edgecnn profile` (measure speed).

Thin commands over `edgecnn.predict`, `edgecnn.ray_predict` and `edgecnn.profile`.
"""

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli.common import EXIT_PARTIAL, echo, flag_of, given, user_errors
from edgecnn.cli.options import FP16_HELP, argument, option, resolve_model, runs_a_model
from edgecnn.cli.progress import ProgressBar
from edgecnn.errors import EdgecnnError

RAY = "Ray (predict --ray)"


@runs_a_model()
def predict(
    ctx: typer.Context,
    model: Annotated[
        Path,
        argument(
            metavar="MODEL",
            help="An .onnx model (an edgecnn export, or any image classifier given --image-size), or an export's "
            "folder (runs its tuned configuration, else its recommended variant).",
        ),
    ],
    inputs: Annotated[
        list[str],
        argument(
            metavar="INPUTS",
            help="Image files and folders (searched recursively). A folder whose subfolders are named like the "
            "model's classes also gets accuracy and a confusion matrix. With --ray also globs, .txt files of paths "
            "and URIs (s3://...).",
        ),
    ],
    batch_size: Annotated[int, option(help="Images per inference call. Default: 32.")] = 32,
    top_k: Annotated[int, option(help="Classes reported per image, most probable first. Default: 3.")] = 3,
    fmt: Annotated[
        str,
        option(
            "--format",
            help="table (for people), json (one JSON object per line per image, then one summary line) or csv. "
            "Default: table.",
        ),
    ] = "table",
    decode_threads: Annotated[
        Optional[int],
        option(help="Threads decoding images while the model runs. Default: logical cores, at most 8."),
    ] = None,
    progress: Annotated[
        Optional[bool],
        option(
            "--progress/--no-progress",
            help="Progress bar on stderr. Default: on for 1,000 images or more, or when stderr is a terminal.",
        ),
    ] = None,
    fp16: Annotated[bool, option("--fp16/--no-fp16", help=FP16_HELP)] = True,
    ray: Annotated[
        Optional[str],
        option(
            help='Run on Ray actors (pip install "edgecnn[ray]"): local (start a Ray on this machine and stop it '
            "after), auto (this machine's cluster) or ray://HOST:PORT. Sources may also be globs and .txt files of "
            "paths. Default: no Ray.",
            rich_help_panel=RAY,
        ),
    ] = None,
    ray_actors: Annotated[
        Optional[int],
        option(
            help="Actors, each holding one model session, sharing the cluster's CPUs equally. Default: one per "
            "node, with all of its CPUs.",
            rich_help_panel=RAY,
        ),
    ] = None,
    ray_cpus: Annotated[
        Optional[int], option(help="--ray local: CPUs the local Ray may use. Default: all.", rich_help_panel=RAY)
    ] = None,
    output: Annotated[
        Optional[Path],
        option(
            help="Write one row per image to this .jsonl or .parquet file (atomically) instead of keeping the rows; "
            "stdout gets the summary. Default: none.",
            rich_help_panel=RAY,
        ),
    ] = None,
    runner=None,
    foreign=None,
):
    """Classify images with an ONNX model; exit code 4 when some images could not be read (the rest are reported)."""
    with user_errors(ctx):
        from dataclasses import replace

        from edgecnn.predict import OUTPUT_FORMATS, PredictConfig, confusion_table, summary_lines, write_output
        from edgecnn.predict import predict as run_predict

        OUTPUT_FORMATS[fmt]  # an unknown format fails here, before any image is read
        if ray is None:
            for setting in sorted(given(ctx, "ray_actors", "ray_cpus")):
                raise EdgecnnError(f"{flag_of(setting)}: a Ray setting; add --ray local, auto or ray://HOST:PORT")
        resolved = resolve_model(ctx, model, runner)
        config = PredictConfig(
            model=resolved.path,
            inputs=tuple(i if "://" in i else Path(i) for i in inputs),
            batch_size=batch_size,
            top_k=top_k,
            runner=replace(resolved.runner, prefer_fp16=fp16),
            foreign=foreign,
            decode_threads=decode_threads,
        )
        with ProgressBar(progress) as bar:
            if ray is None and output is None:
                result = run_predict(config, progress=bar.update)
            else:
                result = _predict_on_ray(config, ray, ray_actors, ray_cpus, output, bar)
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
            echo(
                f"{result.failed} of {result.count} images could not be read (exit code {EXIT_PARTIAL}: a partial result)",
                err=True,
                color="red",
            )
            raise typer.Exit(EXIT_PARTIAL)


def _predict_on_ray(config, address, actors, cpus, output, bar):
    from edgecnn.ray_predict import RayPredictConfig, predict_on_ray

    if address is None:
        raise EdgecnnError("--output needs --ray; plain predict writes rows with --format json > FILE")
    ray_config = RayPredictConfig(config, address=address, output=output, local_cpus=cpus, actors=actors)
    return predict_on_ray(ray_config, progress=bar.update, log=lambda message: echo(message, err=True))


@runs_a_model()
def profile(
    ctx: typer.Context,
    models: Annotated[
        list[Path],
        argument(
            metavar="MODELS",
            help="One or more .onnx models, compared side by side (e.g. model.onnx model_int8.onnx); the first is "
            "the speedup baseline. A folder of an export measures its tuned configuration; a lone file of a tuned "
            "folder runs with its tuned settings.",
        ),
    ],
    batch_sizes: Annotated[str, option(help="Comma-separated batch sizes to measure. Default: 1,8,32.")] = "1,8,32",
    iterations: Annotated[int, option(help="Timed runs per batch size (ignored with --seconds). Default: 100.")] = 100,
    seconds: Annotated[
        Optional[float],
        option(help="Time budget in seconds per batch size (and per mode) instead of --iterations. Default: off."),
    ] = None,
    warmup: Annotated[int, option(help="Untimed warm-up runs per batch size, reported apart. Default: 5.")] = 5,
    images: Annotated[
        Optional[Path],
        option(
            help="Folder of real images: also measure end to end (decode + preprocess + infer + top-k). "
            "Default: model only."
        ),
    ] = None,
    op_profile: Annotated[
        bool,
        option(
            "--op-profile",
            help="Trace with onnxruntime's profiler at the largest batch size and list the slowest operator types "
            "and the slowest nodes (with their output shapes). Default: off.",
        ),
    ] = False,
    top_ops: Annotated[int, option(help="Operator types, and nodes, listed by --op-profile. Default: 10.")] = 10,
    json_path: Annotated[
        Optional[Path],
        option(
            "--json",
            help="Write the full report (stats, warm-up, machine info, operators and slowest nodes, speedups) "
            "as JSON to this file. "
            "Default: none.",
        ),
    ] = None,
    plot: Annotated[
        Optional[Path],
        option(
            help="Write an SVG image (the name must end in .svg) of p50 latency and throughput against batch size, "
            "one line per model, to this file. Default: none."
        ),
    ] = None,
    decode_threads: Annotated[
        Optional[int],
        option(help="End to end: threads decoding images while the model runs. Default: logical cores, at most 8."),
    ] = None,
    runner=None,
    foreign=None,
):
    """Measure latency (p50/p90/p99), throughput and peak memory per batch size, for one or more models."""
    with user_errors(ctx):
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
            check_plot_path(plot)
        for out in (json_path, plot):
            if out is not None:
                check_writable(out)  # before minutes of measuring, not after
        resolved = [resolve_model(ctx, m, runner) for m in models]
        report = profile_models([r.path for r in resolved], config, runners=[r.runner for r in resolved])
        for prof in report.models:  # labels, not file names: two models may both be model.onnx
            note = prof.runner.get("device_note")
            echo(
                f"{prof.label}: ran on {prof.provider} (--device {prof.runner['device']}){'; ' + note if note else ''}",
                err=True,
            )
        if report.skipped_images:
            shown = "; ".join(report.skipped_images[:3]) + ("; ..." if len(report.skipped_images) > 3 else "")
            echo(f"warning: skipped {len(report.skipped_images)} image(s) that do not decode: {shown}", err=True)
        render(report, sys.stdout)
        if json_path is not None:
            write_json(json_path, report.to_dict())
            echo(f"wrote {json_path}")
        if plot is not None:
            write_plot(report, plot)
            echo(f"wrote {plot}")
