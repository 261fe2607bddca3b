"""What every command shares: one-line messages, one-line errors (a setting named by its flag), JSON
for scripts, and the group class that keeps usage errors to one red line too.
"""

from __future__ import annotations

import contextlib
import json
import sys

import typer
from typer import _click  # typer vendors click: its exceptions are what a usage error raises (typer pinned)
from typer.core import TyperGroup

from edgecnn.errors import EdgecnnError, SettingError
from edgecnn.files import jsonable

# Exit codes beyond 0 (done) and 1 (an error, one red line): 2 a usage error (a bad flag or value),
# 3 a model that did not learn (train), 4 a partial result (predict: some images could not be read).
EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 1, 2, 4

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


def flag_for(ctx: typer.Context | None, setting: str) -> str:
    """The flag of the running command that sets `setting`; the setting's own name where none does."""
    flag = flag_of(setting)
    if ctx is None or not any(flag in param.opts for param in ctx.command.params):
        return setting
    return flag


def echo(message: str = "", err: bool = False, color: str | None = None) -> None:
    """One line for people: on stdout, or stderr with err=True; colour only on a terminal."""
    typer.secho(message, err=err, fg=color)


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=jsonable))


def csv(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c')."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def given(ctx: typer.Context, *parameters: str) -> frozenset:
    """The parameters among `parameters` that were given on the command line (not defaults)."""
    sources = {name: ctx.get_parameter_source(name) for name in parameters}
    return frozenset(name for name, source in sources.items() if source is not None and source.name != "DEFAULT")


@contextlib.contextmanager
def user_errors(ctx: typer.Context | None = None):
    """Print an EdgecnnError as one red line and exit 1 (a setting named by its flag); let bugs raise."""
    try:
        yield
    except SettingError as exc:
        echo(f"error: {exc.message(flag_for(ctx, exc.setting))}", err=True, color="red")
        raise typer.Exit(EXIT_ERROR) from None
    except EdgecnnError as exc:
        echo(f"error: {exc}", err=True, color="red")
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        echo("interrupted", err=True, color="red")
        raise typer.Exit(130) from None


class Commands(TyperGroup):
    """edgecnn's command group: commands in the order registered (the pipeline's); a usage error (an
    unknown flag, a value of the wrong type) is one red line naming the flag, as every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except _click.exceptions.ClickException as exc:
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else self._command_path(args)
            message = " ".join(exc.format_message().split())
            echo(f"error: {message} (see {command} --help)", err=True, color="red")
            code = exc.exit_code
        except typer.Abort:
            echo("aborted", err=True, color="red")
            code = EXIT_ERROR
        sys.exit(code if isinstance(code, int) else 0)

    def _command_path(self, args) -> str:
        """'edgecnn predict' for the command `args` name (the option parser raises some errors without it)."""
        path, group = [self.name or "edgecnn"], self
        for word in sys.argv[1:] if args is None else args:
            command = getattr(group, "commands", {}).get(word)
            if command is None:
                break
            path, group = path + [word], command
        return " ".join(path)


def survive_narrow_encodings() -> None:
    """On a stdout or stderr that cannot write UTF-8 (a latin-1 locale, PYTHONIOENCODING=ascii), write what
    it cannot encode as '?', instead of failing with a traceback halfway through a table or the help."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding and not encoding.startswith("utf"):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(errors="replace")
