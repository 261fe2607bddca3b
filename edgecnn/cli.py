"""`edgecnn` command line: thin commands that parse options and call library functions.

Built on click (which uvicorn needs anyway); every command turns an `EdgecnnError` into one red
line on stderr and exit code 1. TensorFlow is imported only inside `train` and `export`, never
at import time.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from edgecnn import __version__
from edgecnn.errors import EdgecnnError, SettingError


class Group(click.Group):
    """Commands listed in --help in the order they were registered (the order of the pipeline)."""

    group_class = type  # subgroups (deploy) are Groups too

    def list_commands(self, ctx):
        return list(self.commands)


def argument(name: str, help: str, **kwargs):
    """A positional argument with help (click >= 8.5 lists it); `type` defaults to a path the command checks."""
    kwargs.setdefault("type", click.Path(path_type=Path))
    return click.argument(name, help=help, **kwargs)


def echo(message: str = "", err: bool = False, color: str | None = None) -> None:
    """One line for people: on stdout, or stderr with err=True; colour only on a terminal."""
    click.secho(message, err=err, fg=color)


# Settings (config fields) set by a flag of another name; the others are --FIELD-NAME.
SETTING_FLAGS = {
    "intra_op_threads": "--threads",
    "allow_spinning": "--spin",
    "cudnn_conv_algo_search": "--cudnn-algo-search",
    "ep_options": "--ep-option",
    "time_budget_s": "--time-budget",
    "shutdown_timeout_s": "--shutdown-timeout",
    "drain_delay_s": "--drain-delay",
    "header_timeout_s": "--header-timeout",
    "body_timeout_s": "--body-timeout",
    "watch_interval_s": "--watch-interval",
    "max_thumbnails": "--max-images",
    "early_stopping_patience": "--patience",
    "distribute_timeout_s": "--distribute-timeout",
    "local_cpus": "--ray-cpus",
    "actors": "--ray-actors",
    "address": "--ray",
    "data_dir": "--data",
}


def flag_of(setting: str) -> str:
    """The flag that sets `setting` in the commands that have it (--FIELD-NAME unless SETTING_FLAGS says)."""
    return SETTING_FLAGS.get(setting, "--" + setting.replace("_", "-"))


def flag_for(setting: str) -> str:
    """The flag of the running command that sets `setting`; the setting's own name where none does."""
    ctx = click.get_current_context(silent=True)
    flag = flag_of(setting)
    if ctx is None or not any(flag in param.opts for param in ctx.command.params):
        return setting
    return flag


@contextlib.contextmanager
def user_errors():
    """Print an EdgecnnError as one line and exit 1 (a setting named by its flag); let bugs raise."""
    try:
        yield
    except SettingError as exc:
        echo(f"error: {exc.message(flag_for(exc.setting))}", err=True, color="red")
        raise click.exceptions.Exit(1) from None
    except EdgecnnError as exc:
        echo(f"error: {exc}", err=True, color="red")
        raise click.exceptions.Exit(1) from None
    except KeyboardInterrupt:
        echo("interrupted", err=True, color="red")
        raise click.exceptions.Exit(130) from None


def print_json(obj) -> None:
    from edgecnn.files import _jsonable

    click.echo(json.dumps(obj, indent=2, default=_jsonable))


@click.group(
    "edgecnn",
    cls=Group,
    no_args_is_help=True,
    help="Train an image classifier, export it to a fast quantized ONNX model, and run, profile and serve it on a device.",
)
@click.version_option(__version__, "--version", message="edgecnn %(version)s", help="Print the version and exit.")
def app():
    """edgecnn: folder of pictures -> trained Keras model -> quantized ONNX -> predict, profile, serve."""


# ==== datasets / train (stage 1) ==========================================================
def _csv(text: str) -> tuple:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@app.command()
@argument(
    "name",
    type=str,
    help="Built-in dataset: digits (scikit-learn's 1,797 real 8x8 handwritten digit scans) or photos (random crops of real photographs shipped in scikit-learn and scikit-image, one class each).",
)
@argument("out_dir", help="Folder to write the class-folder image tree into (OUT_DIR/<class>/<n>.png).")
@click.option("--overwrite", is_flag=True, help="Rewrite the tree even if it is already complete.")
@click.option("--per-class", default=100, help="photos: images per class. Default: 100.")
@click.option("--size", default=256, help="photos: side of each JPEG in pixels. Default: 256.")
@click.option(
    "--classes",
    default="",
    help="photos: comma list of astronaut, cat, china, coffee, flower, rocket. Default: every one installed.",
)
def datasets(name: str, out_dir: Path, overwrite: bool, per_class: int, size: int, classes: str):
    """Write a built-in dataset as a folder of class subfolders (no network needed)."""
    with user_errors():
        from edgecnn.datasets import DATASETS

        if name not in DATASETS:
            raise EdgecnnError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        extra = {"per_class": per_class, "size": size, "classes": _csv(classes) or None} if name == "photos" else {}
        path = DATASETS[name](out_dir, overwrite=overwrite, **extra)
        echo(f"wrote {name} to {path}")


# The commands live in modules by idea; importing them registers them on `app`, in --help's order.
from edgecnn import cli_train, cli_run, cli_serve, cli_device  # noqa: E402,F401


def main() -> None:
    app(prog_name="edgecnn")


if __name__ == "__main__":  # python -m edgecnn.cli: run the module the command modules registered on
    from edgecnn.cli import main as registered_main

    registered_main()
