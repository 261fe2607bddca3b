"""`edgecnn` command line: thin commands that parse options and call library functions.

Every command turns an `EdgecnnError` into one red line on stderr and exit code 1.
TensorFlow is imported only inside `train` and `export`, never at import time.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

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
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
):
    """edgecnn: folder of pictures -> trained Keras model -> quantized ONNX -> predict, profile, serve."""


# ==== datasets / train (stage 1) ==========================================================
def _csv(text: str) -> tuple:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@app.command()
def datasets(
    name: str = typer.Argument(
        ..., help="Built-in dataset: digits (scikit-learn's 1,797 real 8x8 handwritten digit scans)."
    ),
    out_dir: Path = typer.Argument(
        ..., help="Folder to write the class-folder image tree into (OUT_DIR/<class>/<n>.png)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rewrite the tree even if it is already complete."),
):
    """Write a built-in dataset as a folder of class subfolders (no network needed)."""
    with user_errors():
        from edgecnn.datasets import DATASETS

        if name not in DATASETS:
            raise EdgecnnError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        path = DATASETS[name](out_dir, overwrite=overwrite)
        typer.echo(f"wrote {name} to {path}")


# The commands live in modules by idea; importing them registers them on `app`, in --help's order.
from edgecnn import cli_train, cli_run, cli_serve, cli_device  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":  # python -m edgecnn.cli: run the module the command modules registered on
    from edgecnn.cli import main as registered_main

    registered_main()
