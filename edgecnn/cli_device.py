"""`edgecnn verify` and `edgecnn tune`: the commands that judge and choose how a model runs on this device.

Registered on `edgecnn.cli.app`; thin wrappers over `edgecnn.verify` and `edgecnn.tune`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli import app, print_json, user_errors
from edgecnn.cli_options import _ProgressBar, _resolve_model, _with_model_options
from edgecnn.errors import EdgecnnError


@app.command("verify")
@_with_model_options
def verify_command(
    model: Path = typer.Argument(
        ...,
        help="An export's folder (verifies its tuned configuration, else its recommended variant) or one .onnx file of it.",
    ),
    variant: Optional[str] = typer.Option(
        None,
        "--variant",
        help="With a folder: fp32, int8, fp16 (that file), or all (every variant file in it, default settings). Default: the tuned configuration or the recommended variant.",
    ),
    max_accuracy_drop: Optional[float] = typer.Option(
        None,
        "--max-accuracy-drop",
        help="Largest accuracy loss against Keras on the verification set, in percentage points. Default: the export's budget.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (for scripts)."),
    runner=None,
    foreign=None,
):
    """Check a model on this device against the Keras answers its export kept; exit 1 outside the accuracy budget."""
    with user_errors():
        from edgecnn.metadata import VARIANT_FILES
        from edgecnn.runtime import Runner
        from edgecnn.verify import read_verification_set, score

        if variant is not None and not model.is_dir():
            raise EdgecnnError(f"--variant {variant}: give the model folder, not a file, with --variant")
        if variant == "all":
            targets = [(model / f, runner) for f in VARIANT_FILES.values() if (model / f).is_file()]
            if not targets:
                raise EdgecnnError(
                    f"{model}: no exported model in this folder; export one with: edgecnn export {model}"
                )
        else:
            if variant is not None:
                if variant not in VARIANT_FILES:
                    raise EdgecnnError(f"--variant {variant}: expected one of {', '.join(VARIANT_FILES)} or all")
                model = model / VARIANT_FILES[variant]
                if not model.is_file():
                    raise EdgecnnError(
                        f"{model}: not in the folder; export it with: edgecnn export {model.parent} --quantize {variant}"
                    )
            resolved = _resolve_model(model, runner)
            targets = [(resolved.path, resolved.runner)]
        vset = read_verification_set(targets[0][0].parent)
        results = [score(Runner(path, cfg), vset, max_accuracy_drop) for path, cfg in targets]
        if as_json:
            print_json([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict())
        else:
            for r in results:
                typer.echo(r.runner_summary, err=True)
                typer.secho(r.line(), fg=typer.colors.GREEN if r.passed else typer.colors.RED)
        failed = [r for r in results if not r.passed]
        if failed:
            typer.secho(
                f"error: verification failed for {', '.join(Path(r.model).name for r in failed)}: accuracy outside "
                "the budget on this device; do not deploy this configuration",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(1)


@app.command("tune")
def tune_command(
    model_dir: Path = typer.Argument(
        ..., help="An export's folder (with verification.npz, written by edgecnn export)."
    ),
    objective: str = typer.Option(
        "latency",
        "--objective",
        help="latency (p50 at batch 1) or throughput (images/s at --batch-size). Default: latency.",
    ),
    batch_size: int = typer.Option(
        32, "--batch-size", help="The serving batch size, for the throughput column and objective. Default: 32."
    ),
    time_budget: float = typer.Option(
        60.0,
        "--time-budget",
        help="Seconds for the whole search; candidates not reached are listed as such. Default: 60.",
    ),
    devices: str = typer.Option(
        "",
        "--devices",
        help="Comma list of providers to try (cpu, openvino, cuda, tensorrt). Default: every one usable here.",
    ),
    rewrites: bool = typer.Option(
        True,
        "--rewrites/--no-rewrites",
        help="Try the exact INT8 rewrites of edgecnn/rewrites.py with the providers they are meant for (needs the onnx package). Default: on.",
    ),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr. Default: when stderr is a terminal."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print deploy.json's content (for scripts) instead of the table."
    ),
):
    """Find the fastest verified configuration of a model on this machine and write MODEL_DIR/deploy.json."""
    with user_errors():
        from edgecnn.tune import TuneConfig, tune

        config = TuneConfig(
            model_dir=str(model_dir),
            objective=objective,
            batch_size=batch_size,
            time_budget_s=time_budget,
            devices=tuple(d.strip() for d in devices.split(",") if d.strip()),
            rewrites=rewrites,
        )
        bar = _ProgressBar(progress)

        def log(msg):
            return typer.echo(msg, err=True)

        try:
            result = tune(config, progress=lambda done, total, _name: bar.update(done, total), log=log)
        finally:
            bar.close()
        if as_json:
            print_json(result.to_dict())
            return
        _print_tune_table(result)


def _print_tune_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgecnn.predict import wide_console_width

    n = result.batch_size
    table = Table(title=f"edgecnn tune {result.model_dir} ({result.objective}; {result.seconds:.0f} s)")
    for col in ("candidate", "status", "accuracy", "=Keras", "max|dp|", "p50 ms b=1", f"img/s b={n}", "why not chosen"):
        table.add_column(col, justify="left" if col in ("candidate", "status", "why not chosen") else "right")

    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    for c in result.candidates:
        table.add_row(
            ("* " if c.chosen else "") + c.name,
            c.status,
            fmt(c.accuracy, ".2%"),
            fmt(c.agreement, ".2%"),
            fmt(c.max_abs_diff, ".1e"),
            fmt(c.p50_ms, ".3f"),
            fmt(c.images_per_s, ".0f"),
            "" if c.chosen else c.why,
        )
    Console(width=wide_console_width(sys.stdout)).print(table)
    chosen, default = result.chosen, result.default
    typer.secho(
        f"chose {chosen.name}: {result.speedup:.2f}x today's default ({default.name}) at the {result.objective} "
        f"objective; p50 {chosen.p50_ms:.3f} ms at batch 1, {chosen.images_per_s:.0f} images/s at batch {n}",
        fg=typer.colors.GREEN,
    )
    typer.echo(
        f"wrote {result.deploy_file}; predict, profile, serve and verify given {result.model_dir} use it on this machine"
    )
