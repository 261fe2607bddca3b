"""Options shared by the commands that run a model (predict, profile, serve, verify, tune): the
execution provider and its settings, the tuned configuration of a model folder, the settings of a
foreign model, and the progress bar.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgecnn.errors import EdgecnnError
from edgecnn.cli import user_errors


_DEVICE_HELP = (
    "Where to run: auto (CUDA if it works, else CPU; says which ran), cpu, cuda or cuda:N, openvino or "
    "openvino:CPU|GPU|NPU (the openvino extra), tensorrt. A missing provider fails clearly, never falls back. "
    "Default: auto, or the tuned configuration of the model's folder (edgecnn tune)."
)
_EP_OPTION_HELP = (
    "A setting of the chosen execution provider, KEY=VALUE, repeatable. openvino: precision=f32|bf16|f16|device "
    "(default f32), hint=LATENCY|THROUGHPUT, streams=N; tensorrt: trt_fp16_enable=True. Default: none."
)
_THREADS_HELP = "onnxruntime intra-op CPU threads. Default: the number of physical cores."
_GRAPH_OPT_HELP = "onnxruntime graph optimization level: disable, basic, extended or all. Default: all."
_IO_BINDING_HELP = "Bind inputs and outputs to the device (IOBinding). Default: on for CUDA, off for CPU."
_CUDNN_HELP = "CUDA only: cuDNN convolution algorithm search: EXHAUSTIVE (slow first run, fastest after), HEURISTIC or DEFAULT. Default: EXHAUSTIVE."
_FOREIGN_NOTE = "Only for an ONNX model without edgecnn metadata (ignored otherwise)."
_FP16_HELP = "CUDA only: given an export's model.onnx, run its FP16 variant (model.fp16.onnx) when there is one; says so. Default: on."


# The options of every command that runs a model, declared once (see `_with_model_options`):
# (parameter name, type, typer option).
_RUNNER_OPTIONS = (
    ("device", str, typer.Option("auto", "--device", help=_DEVICE_HELP)),
    ("threads", Optional[int], typer.Option(None, "--threads", help=_THREADS_HELP)),
    ("graph_optimization", str, typer.Option("all", "--graph-optimization", help=_GRAPH_OPT_HELP)),
    ("io_binding", Optional[bool], typer.Option(None, "--io-binding/--no-io-binding", help=_IO_BINDING_HELP)),
    ("cudnn_algo_search", str, typer.Option("EXHAUSTIVE", "--cudnn-algo-search", help=_CUDNN_HELP)),
    ("ep_option", Optional[List[str]], typer.Option(None, "--ep-option", help=_EP_OPTION_HELP)),
)
# CLI option -> the RunnerConfig field it sets (to tell what the user typed from defaults).
_RUNNER_FIELDS = {
    "device": "device",
    "threads": "intra_op_threads",
    "graph_optimization": "graph_optimization",
    "io_binding": "io_binding",
    "cudnn_algo_search": "cudnn_conv_algo_search",
    "ep_option": "ep_options",
    "spin": "allow_spinning",
}


def _explicit_runner_fields() -> frozenset:
    """The RunnerConfig fields whose options were typed on the command line (they beat a tuned configuration)."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on click
        from click import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return frozenset()
    sources = {option: ctx.get_parameter_source(option) for option in _RUNNER_FIELDS}
    return frozenset(
        _RUNNER_FIELDS[option] for option, source in sources.items() if source is not None and source.name != "DEFAULT"
    )


def _resolve_model(model: Path, runner, also_explicit: frozenset = frozenset()):
    """A model folder or file -> (file, runner config) with the folder's tuned configuration applied; says so on stderr."""
    from edgecnn.tuned import resolve

    resolved = resolve(model, runner, _explicit_runner_fields() | also_explicit)
    if resolved.note:
        typer.secho(resolved.note, err=True, fg=typer.colors.YELLOW if resolved.warning else None)
    return resolved


_FOREIGN_OPTIONS = (
    (
        "image_size",
        Optional[str],
        typer.Option(None, "--image-size", help=f"Model input size HxW in pixels, e.g. 224x224. {_FOREIGN_NOTE}"),
    ),
    (
        "channels",
        Optional[int],
        typer.Option(
            None,
            "--channels",
            help=f"1 (grayscale) or 3 (RGB). Default: read from the model's input shape. {_FOREIGN_NOTE}",
        ),
    ),
    (
        "classes",
        Optional[str],
        typer.Option(
            None,
            "--classes",
            help=f"Class names a,b,c or a text file with one per line. Default: 0, 1, ... {_FOREIGN_NOTE}",
        ),
    ),
    (
        "layout",
        Optional[str],
        typer.Option(
            None,
            "--layout",
            help=f"Input layout nhwc or nchw. Default: guessed from the model's input shape. {_FOREIGN_NOTE}",
        ),
    ),
    (
        "input_dtype",
        Optional[str],
        typer.Option(
            None,
            "--input-dtype",
            help=f"uint8 or float32 (raw 0-255 pixels either way). Default: the model's input type. {_FOREIGN_NOTE}",
        ),
    ),
)


def _with_model_options(command):
    """Add the runner and foreign-model options to a typer command.

    The command declares `runner` and `foreign` parameters instead of ten options, and gets a
    `RunnerConfig` and a `ForeignModelSettings` built from what the user typed (a bad value
    is a one-line error, as everywhere).
    """
    import functools
    import inspect

    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name not in ("runner", "foreign")]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for name, kind, option in _RUNNER_OPTIONS + _FOREIGN_OPTIONS
    ]

    @functools.wraps(command)
    def with_options(**kwargs):
        runner_values = [kwargs.pop(name) for name, _, _ in _RUNNER_OPTIONS]
        foreign_values = [kwargs.pop(name) for name, _, _ in _FOREIGN_OPTIONS]
        with user_errors():
            runner, foreign = _runner_config(*runner_values), _foreign_settings(*foreign_values)
        return command(runner=runner, foreign=foreign, **kwargs)

    with_options.__signature__ = signature.replace(parameters=own + added)
    return with_options


def _runner_config(
    device: str,
    threads: Optional[int],
    graph_optimization: str,
    io_binding: Optional[bool],
    cudnn_algo_search: str,
    ep_option: Optional[List[str]] = None,
):
    from edgecnn.providers import parse_ep_options
    from edgecnn.runtime import RunnerConfig

    return RunnerConfig(
        device=device,
        intra_op_threads=threads,
        graph_optimization=graph_optimization,
        io_binding=io_binding,
        cudnn_conv_algo_search=cudnn_algo_search.upper(),
        ep_options=parse_ep_options(ep_option),
    )


def _foreign_settings(
    image_size: Optional[str],
    channels: Optional[int],
    classes: Optional[str],
    layout: Optional[str],
    input_dtype: Optional[str],
):
    from edgecnn.metadata import INPUT_DTYPES, LAYOUTS
    from edgecnn.runtime import ForeignModelSettings, parse_class_names, parse_image_size

    if layout is not None and layout not in LAYOUTS:
        raise EdgecnnError(f"--layout {layout}: expected {' or '.join(LAYOUTS)}")
    if input_dtype is not None and input_dtype not in INPUT_DTYPES:
        raise EdgecnnError(f"--input-dtype {input_dtype}: expected {' or '.join(INPUT_DTYPES)}")
    return ForeignModelSettings(
        image_size=parse_image_size(image_size) if image_size else None,
        channels=channels,
        class_names=parse_class_names(classes) if classes else None,
        layout=layout,
        input_dtype=input_dtype,
    )


class _ProgressBar:
    """A rich progress bar on stderr, started once the number of images is known."""

    LARGE = 1000

    def __init__(self, wanted: Optional[bool]):
        self.wanted, self.bar, self.task = wanted, None, None

    def update(self, done: int, total: int) -> None:
        if self.wanted is None:
            self.wanted = total >= self.LARGE or sys.stderr.isatty()
        if not self.wanted:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("predict", total=total)
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ==== end predict =========================================================================

# ==== profile (stage 3) ===================================================================
