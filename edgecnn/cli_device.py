"""`edgecnn verify` and `edgecnn tune`: the commands that judge and choose how a model runs on this device.

Registered on `edgecnn.cli.app`; thin wrappers over `edgecnn.verify` and `edgecnn.tune`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from edgecnn.cli import app, argument, echo, print_json, user_errors
from edgecnn.cli_options import _ProgressBar, _resolve_model, _typed, _with_model_options
from edgecnn.errors import EdgecnnError


@app.command("verify")
@argument(
    "model",
    help="An export's folder (verifies its tuned configuration, else its recommended variant) or one .onnx file of it.",
)
@click.option(
    "--variant",
    default=None,
    help="With a folder: fp32, int8, fp16 (that file), or all (every variant file in it, default settings). Default: the tuned configuration or the recommended variant.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    help="Largest accuracy loss against Keras on the verification set, in percentage points. Default: the export's budget.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (for scripts).")
@_with_model_options
def verify_command(
    model: Path, variant: Optional[str], max_accuracy_drop: Optional[float], as_json: bool, runner, foreign
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
                echo(r.runner_summary, err=True)
                echo(r.line(), color="green" if r.passed else "red")
        failed = [r for r in results if not r.passed]
        if failed:
            echo(
                f"error: verification failed for {', '.join(Path(r.model).name for r in failed)}: accuracy outside "
                "the budget on this device; do not deploy this configuration",
                err=True,
                color="red",
            )
            raise click.exceptions.Exit(1)


@app.command("tune")
@argument("model_dir", help="An export's folder (with verification.npz, written by edgecnn export).")
@click.option(
    "--objective",
    default="latency",
    help="latency (p50 at batch 1) or throughput (images/s at --batch-size). Default: latency.",
)
@click.option(
    "--batch-size", default=32, help="The serving batch size, for the throughput column and objective. Default: 32."
)
@click.option(
    "--time-budget",
    default=60.0,
    help="Seconds for the whole search; candidates not reached are listed as such. Default: 60.",
)
@click.option(
    "--devices",
    default="",
    help="Comma list of providers to try (cpu, openvino, cuda, tensorrt). Default: every one usable here.",
)
@click.option(
    "--rewrites/--no-rewrites",
    default=True,
    help="Try the exact INT8 rewrites of edgecnn/rewrites.py with the providers they are meant for (needs the onnx package). Default: on.",
)
@click.option(
    "--serve",
    "serving",
    is_flag=True,
    help="Tune the serving settings instead (largest batch, queue delay, threads, OpenVINO streams): start a real "
    "edgecnn serve on loopback for each, drive it with --clients clients and keep the most requests/s within "
    "--p99-ms. Needs a tuned folder (run edgecnn tune MODEL_DIR first). Writes deploy.json's serve section.",
)
@click.option(
    "--p99-ms",
    type=float,
    default=None,
    help="With --serve: the p99 latency target in milliseconds. Default: no worse than the default settings' p99.",
)
@click.option(
    "--clients",
    default=8,
    help="With --serve: concurrent clients, each sending its next request on an answer. Default: 8.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr. Default: when stderr is a terminal."
)
@click.option("--json", "as_json", is_flag=True, help="Print deploy.json's content (for scripts) instead of the table.")
def tune_command(
    model_dir: Path,
    objective: str,
    batch_size: int,
    time_budget: float,
    devices: str,
    rewrites: bool,
    serving: bool,
    p99_ms: Optional[float],
    clients: int,
    progress: Optional[bool],
    as_json: bool,
):
    """Find the fastest verified configuration of a model on this machine and write MODEL_DIR/deploy.json."""
    with user_errors():
        if serving:
            return _tune_serving(model_dir, p99_ms, clients, time_budget, progress, as_json)
        for given in sorted(_typed("p99_ms", "clients")):
            raise EdgecnnError(f"--{given.replace('_', '-')} is for tuning the serving settings: add --serve")
        from edgecnn.tune import TuneConfig, tune

        config = TuneConfig(
            model_dir=str(model_dir),
            objective=objective,
            batch_size=batch_size,
            time_budget_s=time_budget,
            devices=tuple(d.strip() for d in devices.split(",") if d.strip()),
            rewrites=rewrites,
        )
        bar = _ProgressBar(progress, label="tune")

        def log(msg):
            return echo(msg, err=True)

        try:
            result = tune(config, progress=lambda done, total, _name: bar.update(done, total), log=log)
        finally:
            bar.close()
        if as_json:
            print_json(result.to_dict())
            return
        _print_tune_table(result)


def _tune_serving(model_dir: Path, p99_ms, clients: int, time_budget: float, progress, as_json: bool) -> None:
    from edgecnn.tune_serve import ServeTuneConfig, tune_serve

    config = ServeTuneConfig(str(model_dir), p99_ms=p99_ms, clients=clients, time_budget_s=time_budget)
    bar = _ProgressBar(progress, label="tune --serve")
    try:
        result = tune_serve(
            config, progress=lambda done, total, _label: bar.update(done, total), log=lambda m: echo(m, err=True)
        )
    finally:
        bar.close()
    if as_json:
        print_json(result.to_dict())
        return
    from edgecnn.terminal import Table

    table = Table(title=f"edgecnn tune {model_dir} --serve ({clients} clients; {result.seconds:.0f} s)")
    for col in ("stage", "setting", "status", "req/s", "p50 ms", "p99 ms", "batch", "why not chosen"):
        table.add_column(col, right=col in ("req/s", "p50 ms", "p99 ms", "batch"))
    for t in result.trials:
        row = t.to_dict()
        table.add_row(
            t.stage,
            ("* " if t.chosen else "") + t.setting.label(),
            t.status,
            f"{row['requests_per_s']:.0f}" if t.runs else "",
            f"{row['p50_ms']:.2f}" if t.runs else "",
            f"{row['p99_ms']:.2f}" if t.runs else "",
            "" if not t.runs or row["mean_batch_size"] is None else f"{row['mean_batch_size']:.1f}",
            "" if t.chosen else t.why,
        )
    table.print()
    chosen, default = result.chosen, result.default
    echo(
        f"chose {chosen.setting.label()}: {result.speedup:.2f}x the default settings' requests/s "
        f"({chosen.requests_per_s:.0f} vs {default.requests_per_s:.0f}) with p99 {chosen.p99_ms:.2f} ms "
        f"(limit {result.limit_ms:.2f} ms) at {clients} clients",
        color="green",
    )
    echo(f"wrote the serve section of {model_dir / 'deploy.json'}; edgecnn serve {model_dir} uses it on this machine")


def _print_tune_table(result) -> None:
    from edgecnn.terminal import Table

    n = result.batch_size
    table = Table(title=f"edgecnn tune {result.model_dir} ({result.objective}; {result.seconds:.0f} s)")
    for col in ("candidate", "status", "accuracy", "=Keras", "max|dp|", "p50 ms b=1", f"img/s b={n}", "why not chosen"):
        table.add_column(col, right=col not in ("candidate", "status", "why not chosen"))

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
    table.print()
    chosen, default = result.chosen, result.default
    echo(
        f"chose {chosen.name}: {result.speedup:.2f}x today's default ({default.name}) at the {result.objective} "
        f"objective; p50 {chosen.p50_ms:.3f} ms at batch 1, {chosen.images_per_s:.0f} images/s at batch {n}",
        color="green",
    )
    echo(
        f"wrote {result.deploy_file}; predict, profile, serve and verify given {result.model_dir} use it on this machine"
    )
