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
# ==== end datasets / train ================================================================

# ==== export (stage 2) ====================================================================
# ==== end export ==========================================================================

# ==== predict (stage 3) ===================================================================
# ==== end predict =========================================================================

# ==== profile (stage 3) ===================================================================
# ==== end profile =========================================================================

# ==== serve (stage 4) =====================================================================
# ==== end serve ===========================================================================


def main() -> None:
    app()


if __name__ == "__main__":
    main()
