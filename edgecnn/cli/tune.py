"""Stage 3 on the device, judging and choosing: `edgecnn verify` (is the model still right here?) and
`edgecnn tune` (which engine, variant and settings are fastest here, verified). Thin commands over
`edgecnn.verify`, `edgecnn.tune` and `edgecnn.tune_serve`.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli.common import EXIT_ERROR, echo, given, print_json, user_errors
from edgecnn.cli.options import argument, option, resolve_model, runs_a_model
from edgecnn.cli.progress import ProgressBar
from edgecnn.errors import EdgecnnError

SERVING = "Serving settings (tune --serve)"


@runs_a_model(foreign=False)  # verify needs the export's verification set: no foreign models
def verify(
    ctx: typer.Context,
    model: Annotated[
        Path,
        argument(
            metavar="MODEL",
            help="An export's folder (verifies its tuned configuration, else its recommended variant) or one .onnx "
            "file of it.",
        ),
    ],
    variant: Annotated[
        Optional[str],
        option(
            help="With a folder: fp32, int8, fp16 (that file), or all (every variant file in it, default settings). "
            "Default: the tuned configuration or the recommended variant."
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[float],
        option(
            help="Largest accuracy loss against Keras on the verification set, in percentage points. "
            "Default: the export's budget."
        ),
    ] = None,
    as_json: Annotated[bool, option("--json", help="Print the results as JSON (for scripts).")] = False,
    runner=None,
):
    """Check a model on this device against the Keras answers its export kept; exit 1 outside the accuracy budget."""
    with user_errors(ctx):
        from edgecnn.metadata import VARIANT_FILES
        from edgecnn.runtime import Runner
        from edgecnn.verify import no_better_than_chance, read_verification_set, score

        if not model.exists():
            raise EdgecnnError(f"{model}: no such model folder or file")
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
            resolved = resolve_model(ctx, model, runner)
            targets = [(resolved.path, resolved.runner)]
        vset = read_verification_set(targets[0][0].parent)
        results = [score(Runner(path, cfg), vset, max_accuracy_drop) for path, cfg in targets]
        if as_json:
            print_json([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict())
        else:
            for r in results:
                echo(r.runner_summary, err=True)
                echo(r.line(), color="green" if r.passed else "red")
        warning = no_better_than_chance(vset)
        if warning:
            echo(warning, err=True, color="yellow")
        failed = [r for r in results if not r.passed]
        if failed:
            echo(
                f"error: verification failed for {', '.join(Path(r.model).name for r in failed)}: accuracy outside "
                "the budget on this device; do not deploy this configuration",
                err=True,
                color="red",
            )
            raise typer.Exit(EXIT_ERROR)


def tune(
    ctx: typer.Context,
    model_dir: Annotated[
        Path,
        argument(metavar="MODEL_DIR", help="An export's folder (with verification.npz, written by edgecnn export)."),
    ],
    objective: Annotated[
        str,
        option(help="latency (p50 at batch 1) or throughput (images/s at --batch-size). Default: latency."),
    ] = "latency",
    batch_size: Annotated[
        int, option(help="The serving batch size, for the throughput column and objective. Default: 32.")
    ] = 32,
    time_budget: Annotated[
        float, option(help="Seconds for the whole search; candidates not reached are listed as such. Default: 60.")
    ] = 60.0,
    devices: Annotated[
        str,
        option(help="Comma list of providers to try (cpu, openvino, cuda, tensorrt). Default: every one usable here."),
    ] = "",
    rewrites: Annotated[
        bool,
        option(
            "--rewrites/--no-rewrites",
            help="Try the exact INT8 rewrites of edgecnn/provider_rewrites.py with the providers and CPUs they are meant for "
            "(needs the onnx package). Default: on.",
        ),
    ] = True,
    serving: Annotated[
        bool,
        option(
            "--serve",
            help="Tune the serving settings instead (largest batch, queue delay, threads, OpenVINO streams): start "
            "a real edgecnn serve on loopback for each, drive it with --clients clients and keep the most "
            "requests/s within --p99-ms. Needs a tuned folder (run edgecnn tune MODEL_DIR first). Writes "
            "deploy.json's serve section.",
            rich_help_panel=SERVING,
        ),
    ] = False,
    p99_ms: Annotated[
        Optional[float],
        option(
            help="The p99 latency target in milliseconds. Default: no worse than the default settings' p99.",
            rich_help_panel=SERVING,
        ),
    ] = None,
    clients: Annotated[
        int,
        option(
            help="Concurrent clients, each sending its next request on an answer. Default: 8.",
            rich_help_panel=SERVING,
        ),
    ] = 8,
    progress: Annotated[
        Optional[bool],
        option("--progress/--no-progress", help="Progress bar on stderr. Default: when stderr is a terminal."),
    ] = None,
    as_json: Annotated[
        bool, option("--json", help="Print deploy.json's content (for scripts) instead of the table.")
    ] = False,
):
    """Find the fastest verified configuration of a model on this machine and write MODEL_DIR/deploy.json."""
    with user_errors(ctx):
        if serving:
            _tune_serving(model_dir, p99_ms, clients, time_budget, progress, as_json)
            return
        for name in sorted(given(ctx, "p99_ms", "clients")):
            raise EdgecnnError(f"--{name.replace('_', '-')} is for tuning the serving settings: add --serve")
        from edgecnn.tune import TuneConfig, tune as run_tune

        config = TuneConfig(
            model_dir=str(model_dir),
            objective=objective,
            batch_size=batch_size,
            time_budget_s=time_budget,
            devices=tuple(d.strip() for d in devices.split(",") if d.strip()),
            rewrites=rewrites,
        )
        with ProgressBar(progress, label="tune") as bar:
            result = run_tune(config, progress=bar.step, log=lambda m: echo(m, err=True))
        if as_json:
            print_json(result.to_dict())
            return
        _print_tune_table(result)


def _tune_serving(model_dir: Path, p99_ms, clients: int, time_budget: float, progress, as_json: bool) -> None:
    from edgecnn.tables import Table
    from edgecnn.tune_serve import ServeTuneConfig, tune_serve

    config = ServeTuneConfig(str(model_dir), p99_ms=p99_ms, clients=clients, time_budget_s=time_budget)
    with ProgressBar(progress, label="tune --serve") as bar:
        result = tune_serve(config, progress=bar.step, log=lambda m: echo(m, err=True))
    if as_json:
        print_json(result.to_dict())
        return
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
    from edgecnn.tables import Table

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
