"""Serve a model and deploy it to a fleet: `edgecnn serve`, `edgecnn deploy kserve|triton`
(registered on `edgecnn.cli.app`; thin wrappers over `edgecnn.serve` and `edgecnn.deploy`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgecnn.cli import app, user_errors
from edgecnn.cli_options import (
    _CUDNN_HELP,
    _DEVICE_HELP,
    _EP_OPTION_HELP,
    _FP16_HELP,
    _GRAPH_OPT_HELP,
    _IO_BINDING_HELP,
    _THREADS_HELP,
    _resolve_model,
    _runner_config,
)


def _serve_defaults():
    from edgecnn.serve_config import ServeConfig  # plain dataclasses: cheap at import

    return ServeConfig()


_SERVE = _serve_defaults()


@app.command("serve")
def serve_command(
    model: Path = typer.Argument(
        ...,
        help="The .onnx model to serve, e.g. models/NAME/model.int8.onnx, or an export's folder (serves its tuned configuration, else its recommended variant).",
    ),
    host: str = typer.Option(
        _SERVE.host,
        help="Address to listen on; default 127.0.0.1 (this machine only). 0.0.0.0 opens it to the network.",
    ),
    port: int = typer.Option(_SERVE.port, help="TCP port; default 8000; 0 picks a free one."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    ep_option: Optional[List[str]] = typer.Option(None, "--ep-option", help=_EP_OPTION_HELP),
    name: Optional[str] = typer.Option(
        None, help="The model's name in URLs (/v2/models/NAME); default: the model file's folder name."
    ),
    max_batch_size: int = typer.Option(
        _SERVE.max_batch_size, help="Most rows (images) per model run; default 32; 1 turns batching off."
    ),
    max_queue_delay_ms: float = typer.Option(
        _SERVE.max_queue_delay_ms,
        help="Longest time in milliseconds a request waits for others to batch with; default 2.",
    ),
    max_queue: int = typer.Option(
        _SERVE.max_queue, help="Requests allowed to wait; more are answered 503 with Retry-After; default 256."
    ),
    no_batching: bool = typer.Option(
        False, "--no-batching", help="Run every request alone (same as --max-batch-size 1)."
    ),
    max_body_bytes: int = typer.Option(
        _SERVE.max_body_bytes,
        help="Largest request body in bytes (after decompression); larger get 413; default 16777216 (16 MiB).",
    ),
    max_pixels: int = typer.Option(
        _SERVE.max_pixels,
        help="Largest image in pixels (width x height) /classify decodes; larger get 413; default 16000000.",
    ),
    threads: Optional[int] = typer.Option(None, help=_THREADS_HELP),
    graph_optimization: str = typer.Option("all", "--graph-optimization", help=_GRAPH_OPT_HELP),
    io_binding: Optional[bool] = typer.Option(None, "--io-binding/--no-io-binding", help=_IO_BINDING_HELP),
    cudnn_algo_search: str = typer.Option("EXHAUSTIVE", "--cudnn-algo-search", help=_CUDNN_HELP),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help=_FP16_HELP),
    spin: bool = typer.Option(
        False,
        "--spin/--no-spin",
        help="Let idle onnxruntime threads busy-wait for the next run: faster for one request at a time without batching, slower when the HTTP server needs the cores; default off.",
    ),
    decode_threads: int = typer.Option(_SERVE.decode_threads, help="Threads decoding images for /classify; default 2."),
    shutdown_timeout: float = typer.Option(
        _SERVE.shutdown_timeout_s, help="Seconds to let in-flight requests finish after SIGTERM/SIGINT; default 30."
    ),
    drain_delay: float = typer.Option(
        _SERVE.drain_delay_s,
        help="Seconds after SIGTERM during which /ready and new inference requests answer 503 (so a load balancer stops sending) before the listener closes; within --shutdown-timeout; SIGINT stops at once. Default 1.",
    ),
    log_level: str = typer.Option(
        "warning", help="uvicorn log level: critical, error, warning (default), info, debug."
    ),
    max_request_rows: int = typer.Option(
        _SERVE.max_request_rows, help="Most rows (images) one /infer request may send; more get 413; default 256."
    ),
    max_connections: int = typer.Option(
        _SERVE.max_connections, help="Most open connections; the next is answered 503 and closed; default 256."
    ),
    max_header_bytes: int = typer.Option(
        _SERVE.max_header_bytes, help="Largest request line + headers in bytes; larger get 431; default 16384."
    ),
    header_timeout: float = typer.Option(
        _SERVE.header_timeout_s,
        help="Seconds from connecting (or a request's first byte) to the end of its headers; slower get 408; default 10.",
    ),
    body_timeout: float = typer.Option(
        _SERVE.body_timeout_s,
        help="Seconds from the end of the headers to the end of the body; slower get 408; default 30.",
    ),
    max_inflight_bytes: int = typer.Option(
        _SERVE.max_inflight_bytes,
        help="Bytes all requests being read, queued or run may hold together (bodies, decompressed bodies, tensors); over it 503 + Retry-After; default 268435456 (256 MiB).",
    ),
    allowed_hosts: Optional[list[str]] = typer.Option(
        None,
        "--allowed-hosts",
        help="Host header value (without port) to accept besides localhost, 127.0.0.1, ::1 and --host; repeat it; '*' accepts any. Guards against DNS rebinding.",
    ),
    no_ui: bool = typer.Option(
        False,
        "--no-ui",
        help="No try-it page at GET / (then /, like any unknown path, answers 404). Default: the page is on.",
    ),
):
    """Serve a model over HTTP: KServe v2 / Open Inference Protocol, dynamic batching, /metrics."""
    with user_errors():
        from dataclasses import replace

        from edgecnn.serve import ServeConfig, serve

        base = replace(
            _runner_config(device, threads, graph_optimization, io_binding, cudnn_algo_search, ep_option),
            allow_spinning=spin,
            prefer_fp16=fp16,
        )
        # The server keeps its own thread spinning (off: the HTTP loop shares the cores) unless --spin is typed.
        resolved = _resolve_model(model, base, also_explicit=frozenset({"allow_spinning"}))
        config = ServeConfig(
            host=host,
            port=port,
            name=name,
            runner=resolved.runner,
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
        )

        def ready(info):
            batching = "off" if info.max_batch_size == 1 else f"up to {info.max_batch_size} rows"
            typer.echo(
                f"serving {info.model_name} on {info.provider} at {info.url}/v2/models/{info.model_name} "
                f"(batching {batching}; {info.http_stack}; ready in {info.startup_seconds:.2f} s)"
            )
            if not no_ui:
                typer.echo(f"try it in a browser: {info.url}/")
            sys.stdout.flush()

        serve(resolved.path, config, on_ready=ready)


# ==== end serve ===========================================================================

# ==== report ==============================================================================


# ==== deploy (stage 5) ====================================================================
deploy_app = typer.Typer(
    help="Write what a fleet needs to serve an exported model: KServe (image + InferenceService) or Triton (model repository).",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")
_VARIANT_HELP = (
    "Which exported file: fp32, int8 or fp16. Default: the variant `edgecnn export` recommended (else model.onnx)."
)


@deploy_app.command("kserve")
def deploy_kserve_command(
    model_dir: Path = typer.Argument(
        ..., help="An exported model folder (models/NAME/ with model.onnx and its variants)."
    ),
    image: str = typer.Option(
        ..., "--image", help="Image reference to build and push, e.g. registry.example.com/team/digits:1."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="InferenceService name and model name in URLs. Default: the model folder's name."
    ),
    gpu: bool = typer.Option(
        False,
        "--gpu",
        help="Install edgecnn[gpu], serve with --device cuda and request one nvidia.com/gpu. Default: CPU.",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder to write (replaced atomically). Default: MODEL_DIR/kserve."
    ),
    variant: Optional[str] = typer.Option(None, "--variant", help=_VARIANT_HELP),
    cpu: str = typer.Option(
        "1", "--cpu", help="CPU request of the predictor (Kubernetes quantity; the limit is twice it). Default: 1."
    ),
    memory: str = typer.Option("1Gi", "--memory", help="Memory request and limit of the predictor. Default: 1Gi."),
):
    """Write a Dockerfile and a KServe InferenceService (v1beta1, v2 protocol) for an exported model."""
    with user_errors():
        from edgecnn.deploy import KServeConfig, deploy_kserve

        files = deploy_kserve(
            KServeConfig(
                model_dir=model_dir, image=image, out=out, name=name, gpu=gpu, variant=variant, cpu=cpu, memory=memory
            )
        )
        typer.echo(f"wrote {files.dockerfile}, {files.manifest} and {files.model}")
        typer.echo(f"next: docker build -t {image} {files.out} && docker push {image}")
        typer.echo(f"      kubectl apply -f {files.manifest}")


@deploy_app.command("triton")
def deploy_triton_command(
    model_dir: Path = typer.Argument(
        ..., help="An exported model folder (models/NAME/ with model.onnx and its variants)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Triton model repository to write into (OUT/NAME/config.pbtxt, labels.txt, 1/model.onnx)."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="Model name in the repository. Default: the model folder's name."
    ),
    variant: Optional[str] = typer.Option(None, "--variant", help=_VARIANT_HELP),
    max_batch_size: int = typer.Option(
        32, "--max-batch-size", help="Triton's max_batch_size (dynamic batching). Default: 32."
    ),
):
    """Write a Triton Inference Server model repository (onnxruntime backend) for an exported model."""
    with user_errors():
        from edgecnn.triton import deploy_triton

        folder = deploy_triton(model_dir, out, name=name, variant=variant, max_batch_size=max_batch_size)
        typer.echo(f"wrote Triton model repository {folder}")
        typer.echo(f"next: tritonserver --model-repository {out}")


# ==== end deploy ==========================================================================
