"""Serve a model and deploy it to a fleet: `edgecnn serve`, `edgecnn deploy kserve|triton`
(registered on `edgecnn.cli.app`; thin wrappers over `edgecnn.serve` and `edgecnn.deploy`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from edgecnn.cli import app, argument, echo, user_errors
from edgecnn.cli_options import _FP16_HELP, _explicit_runner_fields, _typed, with_runner_options


def _serve_defaults():
    from edgecnn.serve.config import ServeConfig  # plain dataclasses: cheap at import

    return ServeConfig()


_SERVE = _serve_defaults()


@app.command("serve")
@argument(
    "model",
    help="The .onnx model to serve, e.g. models/NAME/model.int8.onnx, an export's folder (serves its tuned configuration, else its recommended variant), or a folder of export folders (each served at /v2/models/FOLDER).",
)
@click.option(
    "--host",
    default=_SERVE.host,
    help="Address to listen on; default 127.0.0.1 (this machine only). 0.0.0.0 opens it to the network.",
)
@click.option("--port", default=_SERVE.port, help="TCP port; default 8000; 0 picks a free one.")
@click.option(
    "--name",
    default=None,
    help="The model's name in URLs (/v2/models/NAME); default: the model file's folder name.",
)
@click.option(
    "--max-batch-size",
    default=_SERVE.max_batch_size,
    help="Most rows (images) per model run; default 32; 1 turns batching off.",
)
@click.option(
    "--max-queue-delay-ms",
    default=_SERVE.max_queue_delay_ms,
    help="Longest time in milliseconds a request waits for others to batch with; default 2.",
)
@click.option(
    "--max-queue",
    default=_SERVE.max_queue,
    help="Requests allowed to wait; more are answered 503 with Retry-After; default 256.",
)
@click.option("--no-batching", is_flag=True, help="Run every request alone (same as --max-batch-size 1).")
@click.option(
    "--max-body-bytes",
    default=_SERVE.max_body_bytes,
    help="Largest request body in bytes (after decompression); larger get 413; default 16777216 (16 MiB).",
)
@click.option(
    "--max-pixels",
    default=_SERVE.max_pixels,
    help="Largest image in pixels (width x height) /classify decodes; larger get 413; default 16000000.",
)
@click.option("--fp16/--no-fp16", default=True, help=_FP16_HELP)
@click.option(
    "--spin/--no-spin",
    default=False,
    help="Let idle onnxruntime threads busy-wait for the next run: faster for one request at a time without batching, slower when the HTTP server needs the cores; default off.",
)
@click.option(
    "--decode-threads",
    default=_SERVE.decode_threads,
    help="Threads decoding images for /classify; default 2.",
)
@click.option(
    "--shutdown-timeout",
    default=_SERVE.shutdown_timeout_s,
    help="Seconds to let in-flight requests finish after SIGTERM/SIGINT; default 30.",
)
@click.option(
    "--drain-delay",
    default=_SERVE.drain_delay_s,
    help="Seconds after SIGTERM during which /ready and new inference requests answer 503 (so a load balancer stops sending) before the listener closes; within --shutdown-timeout; SIGINT stops at once. Default 1.",
)
@click.option(
    "--log-level",
    default="warning",
    help="uvicorn log level: critical, error, warning (default), info, debug.",
)
@click.option(
    "--max-request-rows",
    default=_SERVE.max_request_rows,
    help="Most rows (images) one /infer request may send; more get 413; default 256.",
)
@click.option(
    "--max-connections",
    default=_SERVE.max_connections,
    help="Most open connections; the next is answered 503 and closed; default 256.",
)
@click.option(
    "--max-header-bytes",
    default=_SERVE.max_header_bytes,
    help="Largest request line + headers in bytes; larger get 431; default 16384.",
)
@click.option(
    "--header-timeout",
    default=_SERVE.header_timeout_s,
    help="Seconds from connecting (or a request's first byte) to the end of its headers; slower get 408; default 10.",
)
@click.option(
    "--body-timeout",
    default=_SERVE.body_timeout_s,
    help="Seconds from the end of the headers to the end of the body; slower get 408; default 30.",
)
@click.option(
    "--max-inflight-bytes",
    default=_SERVE.max_inflight_bytes,
    help="Bytes all requests being read, queued or run may hold together (bodies, decompressed bodies, tensors); over it 503 + Retry-After; default 268435456 (256 MiB).",
)
@click.option(
    "--allowed-hosts",
    multiple=True,
    help="Host header value (without port) to accept besides localhost, 127.0.0.1, ::1 and --host; repeat it; '*' accepts any. Guards against DNS rebinding.",
)
@click.option(
    "--no-ui",
    is_flag=True,
    help="No try-it page at GET / (then /, like any unknown path, answers 404). Default: the page is on.",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Serve without running each model's verification set first (at start-up and on updates). Default: a model that fails it is not served; one without a set is served with a warning.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Poll the model files; a changed export is loaded and verified in the background, then swapped in between requests (model_version goes up by one); a bad one is refused and the old version keeps serving.",
)
@click.option(
    "--watch-interval",
    default=_SERVE.watch_interval_s,
    help="Seconds between two looks at the model files with --watch; default 2.",
)
@click.option(
    "--model-control",
    default=_SERVE.model_control,
    help="explicit: Triton's repository extension, POST /v2/repository/models/NAME/load and /unload (loads go through the same verification); none (default): off.",
)
@click.option(
    "--control-token",
    default=None,
    envvar="EDGECNN_CONTROL_TOKEN",
    help="Secret (16+ visible ASCII characters, no spaces; or $EDGECNN_CONTROL_TOKEN) that load/unload callers send as 'Authorization: Bearer TOKEN'; without it only loopback callers may load and unload.",
)
@with_runner_options
def serve_command(
    model: Path,
    host: str,
    port: int,
    name: Optional[str],
    max_batch_size: int,
    max_queue_delay_ms: float,
    max_queue: int,
    no_batching: bool,
    max_body_bytes: int,
    max_pixels: int,
    fp16: bool,
    spin: bool,
    decode_threads: int,
    shutdown_timeout: float,
    drain_delay: float,
    log_level: str,
    max_request_rows: int,
    max_connections: int,
    max_header_bytes: int,
    header_timeout: float,
    body_timeout: float,
    max_inflight_bytes: int,
    allowed_hosts: tuple[str, ...],
    no_ui: bool,
    no_verify: bool,
    watch: bool,
    watch_interval: float,
    model_control: str,
    control_token: Optional[str],
    runner,
):
    """Serve a model over HTTP: KServe v2 / Open Inference Protocol, dynamic batching, /metrics."""
    with user_errors():
        from dataclasses import replace

        from edgecnn.serve.server import ServeConfig, serve

        base = replace(
            runner,
            allow_spinning=spin,
            prefer_fp16=fp16,
        )
        # The server keeps its own thread spinning (off: the HTTP loop shares the cores) unless --spin is typed;
        # each model's folder may hold a tuned configuration and tuned serving settings (edgecnn.tuned), which
        # the options typed beat.
        explicit = _explicit_runner_fields() | {"allow_spinning"}
        batching = _typed("max_batch_size", "max_queue_delay_ms", "no_batching")
        if "no_batching" in batching:
            batching |= {"max_batch_size"}
        config = ServeConfig(
            host=host,
            port=port,
            name=name,
            runner=base,
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
                else f"{len(names)} models ({info.model_name}) on {info.provider or 'no provider yet'} at {info.url}/v2/models/NAME"
            )
            echo(f"serving {what} (batching {batching}; {info.http_stack}; ready in {info.startup_seconds:.2f} s)")
            if not no_ui and len(names) == 1:
                echo(f"try it in a browser: {info.url}/")
            sys.stdout.flush()

        serve(model, config, on_ready=ready, say=lambda line: (echo(line, err=True), sys.stderr.flush()))


# ==== end serve ===========================================================================

# ==== report ==============================================================================


# ==== deploy (stage 5) ====================================================================
@app.group(
    "deploy",
    no_args_is_help=True,
    help="Write what a fleet needs to serve an exported model: KServe (image + InferenceService) or Triton (model repository).",
)
def deploy_app():
    pass


_VARIANT_HELP = (
    "Which exported file: fp32, int8 or fp16. Default: the variant `edgecnn export` recommended (else model.onnx)."
)


@deploy_app.command("kserve")
@argument("model_dir", help="An exported model folder (models/NAME/ with model.onnx and its variants).")
@click.option(
    "--image",
    required=True,
    help="Image reference to build and push, e.g. registry.example.com/team/digits:1.",
)
@click.option(
    "--name",
    default=None,
    help="InferenceService name and model name in URLs. Default: the model folder's name.",
)
@click.option(
    "--gpu",
    is_flag=True,
    help="Install edgecnn[gpu], serve with --device cuda and request one nvidia.com/gpu. Default: CPU.",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(path_type=Path),
    help="Folder to write (replaced atomically). Default: MODEL_DIR/kserve.",
)
@click.option("--variant", default=None, help=_VARIANT_HELP)
@click.option(
    "--cpu",
    default="1",
    help="CPU request of the predictor (Kubernetes quantity; the limit is twice it). Default: 1.",
)
@click.option("--memory", default="1Gi", help="Memory request and limit of the predictor. Default: 1Gi.")
def deploy_kserve_command(
    model_dir: Path,
    image: str,
    name: Optional[str],
    gpu: bool,
    out: Optional[Path],
    variant: Optional[str],
    cpu: str,
    memory: str,
):
    """Write a Dockerfile and a KServe InferenceService (v1beta1, v2 protocol) for an exported model."""
    with user_errors():
        from edgecnn.deploy import KServeConfig, deploy_kserve

        files = deploy_kserve(
            KServeConfig(
                model_dir=model_dir, image=image, out=out, name=name, gpu=gpu, variant=variant, cpu=cpu, memory=memory
            )
        )
        echo(f"wrote {files.dockerfile}, {files.manifest} and {files.model}")
        echo(f"next: docker build -t {image} {files.out} && docker push {image}")
        echo(f"      kubectl apply -f {files.manifest}")


@deploy_app.command("triton")
@argument("model_dir", help="An exported model folder (models/NAME/ with model.onnx and its variants).")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Triton model repository to write into (OUT/NAME/config.pbtxt, labels.txt, 1/model.onnx).",
)
@click.option("--name", default=None, help="Model name in the repository. Default: the model folder's name.")
@click.option("--variant", default=None, help=_VARIANT_HELP)
@click.option("--max-batch-size", default=32, help="Triton's max_batch_size (dynamic batching). Default: 32.")
def deploy_triton_command(
    model_dir: Path,
    out: Path,
    name: Optional[str],
    variant: Optional[str],
    max_batch_size: int,
):
    """Write a Triton Inference Server model repository (onnxruntime backend) for an exported model."""
    with user_errors():
        from edgecnn.triton import deploy_triton

        folder = deploy_triton(model_dir, out, name=name, variant=variant, max_batch_size=max_batch_size)
        echo(f"wrote Triton model repository {folder}")
        echo(f"next: tritonserver --model-repository {out}")


# ==== end deploy ==========================================================================
