"""`edgecnn` command line (typer; rich draws its help, tables and progress bars).

Thin commands that parse options and call library functions, one module per stage of the pipeline:

    train.py    datasets, train        workstation: a folder of pictures -> a Keras model
    export.py   export                 workstation: Keras -> ONNX FP32 / INT8 / FP16
    run.py      predict, profile       device: classify images, measure speed
    tune.py     verify, tune           device: still right here? fastest here?
    serve.py    serve                  device: HTTP (KServe v2), batching, model updates
    deploy.py   deploy kserve|triton   fleet: an image + InferenceService, a Triton repository
    report.py   report                 one HTML page of a model's folder

and what they share: common.py (messages, one-line errors, exit codes), options.py (the options of
every command that runs a model), progress.py (the progress bar). This module registers the
commands on `app` in the pipeline's order; no command module imports it, so there is no cycle.
TensorFlow is imported only inside train and export, never at import time.
"""

from typing import Annotated

import typer

from edgecnn import __version__
from edgecnn.cli import deploy, export, report, run, serve, train, tune
from edgecnn.cli.common import Commands, survive_narrow_encodings
from edgecnn.cli.options import option

app = typer.Typer(
    name="edgecnn",
    cls=Commands,
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a bug's traceback stays plain; user errors are one red line anyway
    help="Train an image classifier, export it to a fast quantized ONNX model, and run, profile and serve it on a "
    "device.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgecnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """Train an image classifier, export it to a fast quantized ONNX model, and run, profile and serve it on a
    device."""


WORKSTATION, DEVICE, FLEET = "On the workstation", "On the device", "To a fleet"
app.command("datasets", rich_help_panel=WORKSTATION)(train.datasets)
app.command("train", rich_help_panel=WORKSTATION)(train.train)
app.command("export", rich_help_panel=WORKSTATION)(export.export)
app.command("predict", rich_help_panel=DEVICE)(run.predict)
app.command("profile", rich_help_panel=DEVICE)(run.profile)
app.command("verify", rich_help_panel=DEVICE)(tune.verify)
app.command("tune", rich_help_panel=DEVICE)(tune.tune)
app.command("serve", rich_help_panel=DEVICE)(serve.serve)
app.add_typer(deploy.app, name="deploy", rich_help_panel=FLEET)
app.command("report", rich_help_panel=WORKSTATION)(report.report)


def main() -> None:
    survive_narrow_encodings()
    app(prog_name="edgecnn")
