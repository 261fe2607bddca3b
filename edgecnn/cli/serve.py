"""Stage 4 on the device: `edgecnn serve`, a model (or a folder of them) over HTTP with KServe v2,
dynamic batching, admission control and verified model updates. A thin command over `edgecnn.serve`.
"""

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli.common import echo, given, user_errors
from edgecnn.cli.options import FP16_HELP, argument, explicit_runner_fields, option, runs_a_model
from edgecnn.serve.config import ServeConfig  # plain dataclasses: cheap at import

_SERVE = ServeConfig()
BATCHING, LIMITS, UPDATES, SHUTDOWN = "Batching", "Limits (admission control)", "Model updates", "Shutdown"


@runs_a_model(foreign=False)
def serve(
    ctx: typer.Context,
    model: Annotated[
        Path,
        argument(
            metavar="MODEL",
            help="The .onnx model to serve, e.g. models/NAME/model.int8.onnx, an export's folder (serves its tuned "
            "configuration, else its recommended variant), or a folder of export folders (each served at "
            "/v2/models/FOLDER).",
        ),
    ],
    host: Annotated[
        str,
        option(help="Address to listen on; default 127.0.0.1 (this machine only). 0.0.0.0 opens it to the network."),
    ] = _SERVE.host,
    port: Annotated[int, option(help="TCP port; default 8000; 0 picks a free one.")] = _SERVE.port,
    name: Annotated[
        Optional[str],
        option(help="The model's name in URLs (/v2/models/NAME); default: the model file's folder name."),
    ] = None,
    max_batch_size: Annotated[
        int,
        option(help="Most rows (images) per model run; default 32; 1 turns batching off.", rich_help_panel=BATCHING),
    ] = _SERVE.max_batch_size,
    max_queue_delay_ms: Annotated[
        float,
        option(
            help="Longest time in milliseconds a request waits for others to batch with; default 2.",
            rich_help_panel=BATCHING,
        ),
    ] = _SERVE.max_queue_delay_ms,
    max_queue: Annotated[
        int,
        option(
            help="Requests allowed to wait; more are answered 503 with Retry-After; default 256.",
            rich_help_panel=LIMITS,
        ),
    ] = _SERVE.max_queue,
    no_batching: Annotated[
        bool,
        option("--no-batching", help="Run every request alone (same as --max-batch-size 1).", rich_help_panel=BATCHING),
    ] = False,
    max_body_bytes: Annotated[
        int,
        option(
            help="Largest request body in bytes (after decompression); larger get 413; default 16777216 (16 MiB).",
            rich_help_panel=LIMITS,
        ),
    ] = _SERVE.max_body_bytes,
    max_pixels: Annotated[
        int,
        option(
            help="Largest image in pixels (width x height) /classify decodes; larger get 413; default 16000000.",
            rich_help_panel=LIMITS,
        ),
    ] = _SERVE.max_pixels,
    fp16: Annotated[bool, option("--fp16/--no-fp16", help=FP16_HELP)] = True,
    spin: Annotated[
        bool,
        option(
            "--spin/--no-spin",
            help="Let idle onnxruntime threads busy-wait for the next run: faster for one request at a time without "
            "batching, slower when the HTTP server needs the cores; default off.",
        ),
    ] = False,
    decode_threads: Annotated[
        int, option(help="Threads decoding images for /classify; default 2.")
    ] = _SERVE.decode_threads,
    shutdown_timeout: Annotated[
        float,
        option(
            help="Seconds to let in-flight requests finish after SIGTERM/SIGINT; default 30.", rich_help_panel=SHUTDOWN
        ),
    ] = _SERVE.shutdown_timeout_s,
    drain_delay: Annotated[
        float,
        option(
            help="Seconds after SIGTERM during which /ready and new inference requests answer 503 (so a load "
            "balancer stops sending) before the listener closes; within --shutdown-timeout; SIGINT stops at once. "
            "Default 1.",
            rich_help_panel=SHUTDOWN,
        ),
    ] = _SERVE.drain_delay_s,
    log_level: Annotated[
        str, option(help="uvicorn log level: critical, error, warning (default), info, debug.")
    ] = "warning",
    max_request_rows: Annotated[
        int,
        option(
            help="Most rows (images) one /infer request may send; more get 413; default 256.", rich_help_panel=LIMITS
        ),
    ] = _SERVE.max_request_rows,
    max_connections: Annotated[
        int,
        option(help="Most open connections; the next is answered 503 and closed; default 256.", rich_help_panel=LIMITS),
    ] = _SERVE.max_connections,
    max_header_bytes: Annotated[
        int,
        option(help="Largest request line + headers in bytes; larger get 431; default 16384.", rich_help_panel=LIMITS),
    ] = _SERVE.max_header_bytes,
    header_timeout: Annotated[
        float,
        option(
            help="Seconds from connecting (or a request's first byte) to the end of its headers; slower get 408; "
            "default 10.",
            rich_help_panel=LIMITS,
        ),
    ] = _SERVE.header_timeout_s,
    body_timeout: Annotated[
        float,
        option(
            help="Seconds from the end of the headers to the end of the body; slower get 408; default 30.",
            rich_help_panel=LIMITS,
        ),
    ] = _SERVE.body_timeout_s,
    max_inflight_bytes: Annotated[
        int,
        option(
            help="Bytes all requests being read, queued or run may hold together (bodies, decompressed bodies, "
            "tensors); over it 503 + Retry-After; default 268435456 (256 MiB).",
            rich_help_panel=LIMITS,
        ),
    ] = _SERVE.max_inflight_bytes,
    allowed_hosts: Annotated[
        Optional[list[str]],
        option(
            help="Host header value (without port) to accept besides localhost, 127.0.0.1, ::1 and --host; repeat "
            "it; '*' accepts any. Guards against DNS rebinding. Default: none.",
            rich_help_panel=LIMITS,
        ),
    ] = None,
    no_ui: Annotated[
        bool,
        option(
            "--no-ui",
            help="No try-it page at GET / (then /, like any unknown path, answers 404). Default: the page is on.",
        ),
    ] = False,
    no_verify: Annotated[
        bool,
        option(
            "--no-verify",
            help="Serve without running each model's verification set first (at start-up and on updates). Default: "
            "a model that fails it is not served; one without a set is served with a warning.",
            rich_help_panel=UPDATES,
        ),
    ] = False,
    watch: Annotated[
        bool,
        option(
            "--watch",
            help="Poll the model files; a changed export is loaded and verified in the background, then swapped in "
            "between requests (model_version goes up by one); a bad one is refused and the old version keeps "
            "serving. Default: off.",
            rich_help_panel=UPDATES,
        ),
    ] = False,
    watch_interval: Annotated[
        float,
        option(help="Seconds between two looks at the model files with --watch; default 2.", rich_help_panel=UPDATES),
    ] = _SERVE.watch_interval_s,
    model_control: Annotated[
        str,
        option(
            help="explicit: Triton's repository extension, POST /v2/repository/models/NAME/load and /unload (loads "
            "go through the same verification); none (default): off.",
            rich_help_panel=UPDATES,
        ),
    ] = _SERVE.model_control,
    control_token: Annotated[
        Optional[str],
        option(
            envvar="EDGECNN_CONTROL_TOKEN",
            show_envvar=False,
            help="Secret (16+ visible ASCII characters, no spaces; or $EDGECNN_CONTROL_TOKEN) that load/unload "
            "callers send as 'Authorization: Bearer TOKEN'; without it only loopback callers may load and unload.",
            rich_help_panel=UPDATES,
        ),
    ] = None,
    runner=None,
):
    """Serve a model over HTTP: KServe v2 / Open Inference Protocol, dynamic batching, /metrics."""
    with user_errors(ctx):
        from dataclasses import replace

        from edgecnn.serve.server import serve as run_serve

        # The server keeps its own thread spinning (off: the HTTP loop shares the cores) unless --spin is typed;
        # each model's folder may hold a tuned configuration and tuned serving settings (edgecnn.tuned_config), which
        # the options typed beat.
        explicit = explicit_runner_fields(ctx) | {"allow_spinning"}
        batching = given(ctx, "max_batch_size", "max_queue_delay_ms", "no_batching")
        if "no_batching" in batching:
            batching |= {"max_batch_size"}
        config = ServeConfig(
            host=host,
            port=port,
            name=name,
            runner=replace(runner, allow_spinning=spin, prefer_fp16=fp16),
            max_batch_size=1 if no_batching else max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            max_queue=max_queue,
            max_body_bytes=max_body_bytes,
            max_pixels=max_pixels,
            decode_threads=decode_threads,
            shutdown_timeout_s=shutdown_timeout,
            drain_delay_s=drain_delay,
            log_level=log_level,
            max_request_rows=max_request_rows,
            max_connections=max_connections,
            max_header_bytes=max_header_bytes,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            max_inflight_bytes=max_inflight_bytes,
            allowed_hosts=tuple(allowed_hosts or ()),
            ui=not no_ui,
            verify=not no_verify,
            watch=watch,
            watch_interval_s=watch_interval,
            model_control=model_control,
            control_token=control_token,
            explicit_runner=frozenset(explicit),
            explicit_batching=frozenset(batching - {"no_batching"}),
        )

        def ready(info):
            batching = "off" if info.max_batch_size == 1 else f"up to {info.max_batch_size} rows"
            names = info.model_name.split(", ") if info.model_name else []
            what = (
                f"{names[0]} on {info.provider} at {info.url}/v2/models/{names[0]}"
                if len(names) == 1
                else f"{len(names)} models ({info.model_name}) on {info.provider or 'no provider yet'} at "
                f"{info.url}/v2/models/NAME"
            )
            echo(f"serving {what} (batching {batching}; {info.http_stack}; ready in {info.startup_seconds:.2f} s)")
            if not no_ui and len(names) == 1:
                echo(f"try it in a browser: {info.url}/")
            sys.stdout.flush()

        run_serve(model, config, on_ready=ready, say=lambda line: (echo(line, err=True), sys.stderr.flush()))
