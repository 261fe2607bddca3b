"""Options shared by the commands that run a model (predict, profile, serve, verify, tune): the
execution provider and its settings, the tuned configuration of a model folder, the settings of a
foreign model, and the progress bar.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import click

from edgecnn.cli import echo, flag_of, user_errors
from edgecnn.terminal import ProgressBar, is_terminal


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


def _option(*decls, **attrs):
    """A click option built when a command is declared (each command gets its own objects)."""
    return lambda: click.Option(list(decls), **attrs)


# The options of every command that runs a model, declared once (see `with_runner_options`).
_RUNNER_OPTIONS = (
    _option("--device", default="auto", help=_DEVICE_HELP),
    _option("--threads", type=int, default=None, help=_THREADS_HELP),
    _option("--graph-optimization", default="all", help=_GRAPH_OPT_HELP),
    _option("--io-binding/--no-io-binding", default=None, help=_IO_BINDING_HELP),
    _option("--cudnn-algo-search", default="EXHAUSTIVE", help=_CUDNN_HELP),
    _option("--ep-option", multiple=True, help=_EP_OPTION_HELP),
)
# The RunnerConfig fields a tuned configuration sets, which a typed option overrides; keyed by the
# name of the click parameter that sets each (flags as in cli.SETTING_FLAGS).
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


def _explicit_runner_fields() -> frozenset:
    """The RunnerConfig fields whose options were typed on the command line (they beat a tuned configuration)."""
    return frozenset(_RUNNER_FIELDS[option] for option in _typed(*_RUNNER_FIELDS))


def _typed(*parameters: str) -> frozenset:
    """The parameters among `parameters` that were given on the command line (not defaults)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return frozenset()
    sources = {name: ctx.get_parameter_source(name) for name in parameters}
    return frozenset(name for name, source in sources.items() if source is not None and source.name != "DEFAULT")


def _resolve_model(model: Path, runner, also_explicit: frozenset = frozenset(), serving: bool = False):
    """A model folder or file -> (file, runner config) with the folder's tuned configuration applied; says so on
    stderr, in one line (with `tune --serve`'s settings too when `serving`)."""
    from edgecnn.tuned import resolve

    resolved = resolve(model, runner, _explicit_runner_fields() | also_explicit)
    note = "; ".join(n for n in (resolved.note, resolved.serving_note if serving else "") if n)
    if note:
        echo(note, err=True, color="yellow" if resolved.warning else None)
    return resolved


_FOREIGN_OPTIONS = (
    _option("--image-size", default=None, help=f"Model input size HxW in pixels, e.g. 224x224. {_FOREIGN_NOTE}"),
    _option(
        "--channels",
        type=int,
        default=None,
        help=f"1 (grayscale) or 3 (RGB). Default: read from the model's input shape. {_FOREIGN_NOTE}",
    ),
    _option(
        "--classes",
        default=None,
        help=f"Class names a,b,c or a text file with one per line. Default: 0, 1, ... {_FOREIGN_NOTE}",
    ),
    _option(
        "--layout",
        default=None,
        help=f"Input layout nhwc or nchw. Default: guessed from the model's input shape. {_FOREIGN_NOTE}",
    ),
    _option(
        "--input-dtype",
        default=None,
        help=f"uint8 or float32 (raw 0-255 pixels either way). Default: the model's input type. {_FOREIGN_NOTE}",
    ),
)


def _parameter_names(options) -> tuple[str, ...]:
    """The keyword arguments click passes for `options` (--ep-option -> ep_option)."""
    return tuple(make().name for make in options)


def _add_options(command, wrapper, options) -> None:
    """Give `wrapper` (functools.wraps of `command`) the command's own parameters, then `options`, in --help's order."""
    own = getattr(command, "__click_params__", [])
    # click applies decorators bottom-up and lists __click_params__ reversed: options last in
    # --help come first in the list.
    wrapper.__click_params__ = [make() for make in reversed(options)] + own


def with_runner_options(command):
    """Add the runner options (--device, --threads, ...) to a click command, which receives a
    `RunnerConfig` as `runner` (a bad value is a one-line error, as everywhere)."""

    names = _parameter_names(_RUNNER_OPTIONS)

    @functools.wraps(command)
    def with_options(**kwargs):
        values = {name: kwargs.pop(name) for name in names}
        with user_errors():
            runner = _runner_config(**values)
        return command(runner=runner, **kwargs)

    _add_options(command, with_options, _RUNNER_OPTIONS)
    return with_options


def _with_model_options(command):
    """Add the runner and foreign-model options to a click command.

    The command declares `runner` and `foreign` parameters instead of ten options, and gets a
    `RunnerConfig` and a `ForeignModelSettings` built from what the user typed (a bad value
    is a one-line error, as everywhere).
    """
    names = _parameter_names(_FOREIGN_OPTIONS)

    @functools.wraps(command)
    def with_options(**kwargs):
        values = {name: kwargs.pop(name) for name in names}
        with user_errors():
            foreign = _foreign_settings(**values)
        return command(foreign=foreign, **kwargs)

    _add_options(command, with_options, _FOREIGN_OPTIONS)
    return with_runner_options(with_options)


def _runner_config(
    device: str,
    threads: Optional[int],
    graph_optimization: str,
    io_binding: Optional[bool],
    cudnn_algo_search: str,
    ep_option=(),
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
    from edgecnn.runtime import ForeignModelSettings, parse_class_names, parse_image_size

    return ForeignModelSettings(
        image_size=parse_image_size(image_size) if image_size else None,
        channels=channels,
        class_names=parse_class_names(classes) if classes else None,
        layout=layout,
        input_dtype=input_dtype,
    )


class _ProgressBar:
    """A progress bar on stderr, started once the number of items is known (see edgecnn.terminal)."""

    LARGE = 1000

    def __init__(self, wanted: Optional[bool], label: str = "predict"):
        self.wanted, self.label, self.bar = wanted, label, None

    def update(self, done: int, total: int) -> None:
        if self.wanted is None:
            self.wanted = total >= self.LARGE or is_terminal(sys.stderr)
        if not self.wanted:
            return
        if self.bar is None:
            self.bar = ProgressBar(self.label, total)
        self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ==== end predict =========================================================================

# ==== profile (stage 3) ===================================================================
