"""Options shared by the commands that run a model (predict, profile, serve, verify, tune): where it
runs (the execution provider and its settings), the settings of a model without edgecnn metadata,
and the tuned configuration of an export's folder.

`option` and `argument` declare a parameter with its help (every one has some; the help says the
default). `runs_a_model` gives a command the shared options, declared once, and hands it a
`RunnerConfig` (and a `ForeignModelSettings`) built from what the user typed.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli.common import echo, flag_of, given, user_errors

RUNS_ON = "Where it runs"
FOREIGN = "A model without edgecnn metadata"

FP16_HELP = (
    "CUDA only: given an export's model.onnx, run its FP16 variant (model.fp16.onnx) when there is one; says so. "
    "Default: on."
)


def option(*decls: str, help: str, **kwargs):
    """A typer option with `help` (which says the default: typer's own [default: ...] is off)."""
    return typer.Option(*decls, help=_plain(help), show_default=False, **kwargs)


def argument(help: str, **kwargs):
    """A positional argument with `help`."""
    return typer.Argument(help=_plain(help), show_default=False, **kwargs)


def _plain(help: str) -> str:
    """Help text shown as written: rich reads "[ray]" in 'pip install "edgecnn[ray]"' as markup unless escaped."""
    return help.replace("[", "\\[")


_FOREIGN_NOTE = "Only for an ONNX model without edgecnn metadata (ignored otherwise)."

# (parameter, annotation, default) of the options every command that runs a model has
_RUNNER_OPTIONS = (
    (
        "device",
        Annotated[
            str,
            option(
                help="Where to run: auto (CUDA if it works, else CPU; says which ran), cpu, cuda or cuda:N, openvino "
                "or openvino:CPU|GPU|NPU (the openvino extra), tensorrt. A missing provider fails clearly, never "
                "falls back. Default: auto, or the tuned configuration of the model's folder (edgecnn tune).",
                rich_help_panel=RUNS_ON,
            ),
        ],
        "auto",
    ),
    (
        "threads",
        Annotated[
            Optional[int],
            option(
                help="onnxruntime intra-op CPU threads. Default: the number of physical cores.", rich_help_panel=RUNS_ON
            ),
        ],
        None,
    ),
    (
        "graph_optimization",
        Annotated[
            str,
            option(
                help="onnxruntime graph optimization level: disable, basic, extended or all. Default: all.",
                rich_help_panel=RUNS_ON,
            ),
        ],
        "all",
    ),
    (
        "io_binding",
        Annotated[
            Optional[bool],
            option(
                "--io-binding/--no-io-binding",
                help="Bind inputs and outputs to the device (IOBinding). Default: on for CUDA, off for CPU.",
                rich_help_panel=RUNS_ON,
            ),
        ],
        None,
    ),
    (
        "cudnn_algo_search",
        Annotated[
            str,
            option(
                help="CUDA only: cuDNN convolution algorithm search: EXHAUSTIVE (slow first run, fastest after), "
                "HEURISTIC or DEFAULT. Default: EXHAUSTIVE.",
                rich_help_panel=RUNS_ON,
            ),
        ],
        "EXHAUSTIVE",
    ),
    (
        "ep_option",
        Annotated[
            Optional[list[str]],
            option(
                help="A setting of the chosen execution provider, KEY=VALUE, repeatable. openvino: "
                "precision=f32|bf16|f16|device (default f32), hint=LATENCY|THROUGHPUT, streams=N; tensorrt: "
                "trt_fp16_enable=True. Default: none.",
                rich_help_panel=RUNS_ON,
            ),
        ],
        None,
    ),
)

_FOREIGN_OPTIONS = (
    (
        "image_size",
        Annotated[
            Optional[str],
            option(help=f"Model input size HxW in pixels, e.g. 224x224. {_FOREIGN_NOTE}", rich_help_panel=FOREIGN),
        ],
        None,
    ),
    (
        "channels",
        Annotated[
            Optional[int],
            option(
                help=f"1 (grayscale) or 3 (RGB). Default: read from the model's input shape. {_FOREIGN_NOTE}",
                rich_help_panel=FOREIGN,
            ),
        ],
        None,
    ),
    (
        "classes",
        Annotated[
            Optional[str],
            option(
                help=f"Class names a,b,c or a text file with one per line. Default: 0, 1, ... {_FOREIGN_NOTE}",
                rich_help_panel=FOREIGN,
            ),
        ],
        None,
    ),
    (
        "layout",
        Annotated[
            Optional[str],
            option(
                help=f"Input layout nhwc or nchw. Default: guessed from the model's input shape. {_FOREIGN_NOTE}",
                rich_help_panel=FOREIGN,
            ),
        ],
        None,
    ),
    (
        "input_dtype",
        Annotated[
            Optional[str],
            option(
                help=f"uint8 or float32 (raw 0-255 pixels either way). Default: the model's input type. {_FOREIGN_NOTE}",
                rich_help_panel=FOREIGN,
            ),
        ],
        None,
    ),
)

# The RunnerConfig fields a tuned configuration sets, which a typed option overrides; keyed by the
# parameter that sets each (flags as in common.SETTING_FLAGS).
_TUNED_FIELDS = (
    "device",
    "intra_op_threads",
    "graph_optimization",
    "io_binding",
    "cudnn_conv_algo_search",
    "ep_options",
    "allow_spinning",
)
_RUNNER_FIELDS = {flag_of(field).removeprefix("--").replace("-", "_"): field for field in _TUNED_FIELDS}


def explicit_runner_fields(ctx: typer.Context) -> frozenset:
    """The RunnerConfig fields whose options were typed on the command line (they beat a tuned configuration)."""
    return frozenset(_RUNNER_FIELDS[name] for name in given(ctx, *(n for n in _RUNNER_FIELDS if n in ctx.params)))


def resolve_model(ctx: typer.Context, model: Path, runner, also_explicit: frozenset = frozenset(), serving=False):
    """A model folder or file -> (file, runner config) with the folder's tuned configuration applied; says so on
    stderr, in one line (with `tune --serve`'s settings too when `serving`)."""
    from edgecnn.tuned_config import resolve

    resolved = resolve(model, runner, explicit_runner_fields(ctx) | also_explicit)
    note = "; ".join(n for n in (resolved.note, resolved.serving_note if serving else "") if n)
    if note:
        echo(note, err=True, color="yellow" if resolved.warning else None)
    return resolved


def runs_a_model(foreign: bool = True):
    """Give a command the runner options (--device, --threads, ...) and, with `foreign`, the foreign-model
    options (--image-size, ...), declared once here. The command declares `ctx: typer.Context` and `runner`
    (and `foreign`) instead of those options, and gets a `RunnerConfig` (and `ForeignModelSettings`) built
    from what the user typed; a bad value is a one-line error, as everywhere."""
    built = {"runner": (_RUNNER_OPTIONS, _runner_config)}
    if foreign:
        built["foreign"] = (_FOREIGN_OPTIONS, _foreign_settings)

    def decorate(command):
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name not in built]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
            for options, _make in built.values()
            for name, annotation, default in options
        ]

        @functools.wraps(command)
        def with_options(**kwargs):
            made = {}
            with user_errors(kwargs.get("ctx")):
                for target, (options, make) in built.items():
                    made[target] = make(**{name: kwargs.pop(name) for name, _, _ in options})
            return command(**kwargs, **made)

        parameters = own + extra
        with_options.__signature__ = inspect.Signature(parameters)
        with_options.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_options

    return decorate


def _runner_config(device, threads, graph_optimization, io_binding, cudnn_algo_search, ep_option):
    from edgecnn.providers import parse_ep_options
    from edgecnn.runtime import RunnerConfig

    return RunnerConfig(
        device=device,
        intra_op_threads=threads,
        graph_optimization=graph_optimization,
        io_binding=io_binding,
        cudnn_conv_algo_search=cudnn_algo_search.upper(),
        ep_options=parse_ep_options(ep_option or ()),
    )


def _foreign_settings(image_size, channels, classes, layout, input_dtype):
    from edgecnn.runtime import ForeignModelSettings, parse_class_names, parse_image_size

    return ForeignModelSettings(
        image_size=parse_image_size(image_size) if image_size else None,
        channels=channels,
        class_names=parse_class_names(classes) if classes else None,
        layout=layout,
        input_dtype=input_dtype,
    )
