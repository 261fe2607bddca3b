"""`edgecnn serve`: one model over HTTP, KServe v2 / Open Inference Protocol, dynamic batching.

Endpoints (``{name}`` is the model's name; every ``/v2/models/{name}/...`` path also
answers under ``/v2/models/{name}/versions/1/...``):

    GET  /v2                         server metadata (extensions: binary_tensor_data, classification)
    GET  /v2/health/live, /ready     200 when alive / ready
    GET  /v2/models/{name}           model metadata: inputs, outputs, datatypes, shapes (-1: batch)
    GET  /v2/models/{name}/ready     200 when the model is ready
    POST /v2/models/{name}/infer     v2 tensors, JSON or Triton's binary-data extension
    POST /v2/models/{name}/classify  an encoded image (body or multipart form) -> top-k labels
    GET  /metrics                    Prometheus text (Triton's metric names where they fit)
    GET  /openapi.json               OpenAPI 3 description of the JSON endpoints

Requests go through `edgecnn.batching.Batcher`; tensors are decoded and encoded by
`edgecnn.protocol`. Device path: onnxruntime, Starlette and uvicorn, never TensorFlow.

Here: the app (routes, each with its OpenAPI operation) and the process (uvicorn, signals,
drain). Beside it: the request handling (service.py), the config (serve_config.py), the wrapper
that maps failures to statuses (endpoints.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from typing import Callable, Optional

import numpy as np

from edgecnn import __version__
from edgecnn.admission import http_protocol
from edgecnn.errors import EdgecnnError, ModelError
from edgecnn import openapi as oa

from edgecnn.endpoints import _error, _json, _response, endpoint
from edgecnn.serve_config import ServeConfig, ServeInfo, _check_name, default_model_name
from edgecnn.service import Service

log = logging.getLogger("edgecnn.serve")


# -- the app -------------------------------------------------------------------------------
def create_app(
    runner,
    config: ServeConfig = ServeConfig(),
    name: Optional[str] = None,
    on_ready: Optional[Callable[[], None]] = None,
):
    """The Starlette app serving `runner` (an `edgecnn.runtime.Runner`, or anything with its API).

    name: the model's name in URLs (default: `config.name`, else the model file's folder).
    The batcher starts with the app's lifespan (or at the first request) and drains on shutdown.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    name = _check_name(name or config.name or default_model_name(getattr(runner, "path", "model")))
    service = Service(runner, config, name)

    async def server_metadata(request):
        return _json(
            200, {"name": "edgecnn", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}
        )

    async def live(request):
        return _response(200, b"", "application/json")

    async def ready(request):
        if "name" in request.path_params:
            service.check_model(request)
        if service.stopping:
            return _error(503, "the server is shutting down")
        return _response(200, b"", "application/json")

    async def model_metadata(request):
        service.check_model(request)
        return _json(200, service.model_metadata())

    async def metrics(request):
        return _response(
            200, service.metrics.render(service.batcher.depth).encode(), "text/plain; version=0.0.4; charset=utf-8"
        )

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    top_k = {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 5}}
    image_body = {"image/*": {"schema": oa.BINARY}, "multipart/form-data": {"schema": oa.obj((), image=oa.BINARY)}}
    # path under /v2/models/{name}, metrics label, handler, verb, inference?, its OpenAPI operation (None: an alias)
    model_routes = (
        (
            "/infer",
            "infer",
            service.infer,
            "POST",
            True,
            oa.post(
                "Inference on v2 tensors (JSON; binary data per Triton's extension)",
                {"application/json": {"schema": oa.ref("InferenceRequest")}},
                oa.reply("outputs", oa.ref("InferenceResponse")),
            ),
        ),
        (
            "/classify",
            "classify",
            service.classify,
            "POST",
            True,
            oa.post(
                "Top-k labels for one encoded image (JPEG, PNG, ...); /predict is an alias",
                image_body,
                oa.reply("best classes first", oa.ref("Classification")),
                (top_k,),
            ),
        ),
        ("/predict", "classify", service.classify, "POST", True, None),
        ("/ready", "model_ready", ready, "GET", False, oa.get("Model readiness", oa.reply("ready"))),
        (
            "",
            "model_metadata",
            model_metadata,
            "GET",
            False,
            oa.get("Model metadata", oa.reply("inputs and outputs (-1: any batch size)", oa.ref("ModelMetadata"))),
        ),
    )
    server_routes = (  # path, metrics label, handler, its OpenAPI operation (GET)
        (
            "/v2",
            "server_metadata",
            server_metadata,
            oa.get("Server metadata", oa.reply("name, version, extensions", oa.ref("ServerMetadata"))),
        ),
        ("/v2/health/live", "live", live, oa.get("Liveness", oa.reply("alive"))),
        ("/v2/health/ready", "ready", ready, oa.get("Readiness", oa.reply("ready"))),
        (
            "/metrics",
            "metrics",
            metrics,
            oa.get("Prometheus metrics", oa.reply("text format 0.0.4", oa.TEXT, "text/plain")),
        ),
        ("/openapi.json", "openapi", None, None),
    )
    paths = {model.replace("{name}", name) + path: {verb.lower(): op} for path, _, _, verb, _, op in model_routes if op}
    paths.update({path: {"get": op} for path, _, _, op in server_routes if op})
    document = oa.document(name, paths)

    async def openapi(request):
        return _json(200, document)

    routes = []
    for path, label, method, verb, inference, _ in model_routes:
        handler = endpoint(service, label, method, inference)
        routes += [Route(model + path, handler, methods=[verb]), Route(versioned + path, handler, methods=[verb])]
    for path, label, method, _ in server_routes:
        routes.append(Route(path, endpoint(service, label, method or openapi), methods=["GET"]))
    if config.ui:  # the try-it page: static, posts to /classify like any client
        from edgecnn.ui import page

        ui_page = page(name, service.meta, runner.provider, config.default_top_k)

        async def ui(request):
            return _response(200, ui_page.body, "text/html; charset=utf-8", ui_page.headers)

        routes.append(Route("/", endpoint(service, "ui", ui), methods=["GET"]))

    async def http_error(request, exc):
        service.metrics.request("other", exc.status_code, 0.0, False)
        return _error(
            exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", getattr(exc, "headers", None)
        )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            service.stopping = True
            await service.batcher.stop(service.shutdown_left())
            service.decode_pool.shutdown(wait=not service.batcher.abandoned, cancel_futures=True)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.service = service
    return app


# -- running it ----------------------------------------------------------------------------
def warm_up(runner) -> None:
    """One run on a zero image so the first request does not pay for lazy initialisation; it also
    checks that the model answers a probability vector per image, which is what serve reports."""
    out = np.asarray(runner.run(np.zeros(runner.metadata.input_shape(1), dtype=runner.numpy_input_dtype)))
    classes = len(runner.metadata.class_names)
    if (
        out.ndim != 2
        or out.shape[1] != classes
        or not np.isfinite(out).all()
        or out.min() < -1e-3
        or out.max() > 1 + 1e-3
        or abs(float(out.sum()) - 1) > 1e-2
    ):
        summary = (
            f"shape {list(out.shape)}"
            if out.ndim != 2 or out.shape[1] != classes
            else f"values {float(out.min()):.3g}..{float(out.max()):.3g} summing to {float(out.sum()):.3g}"
        )
        raise ModelError(
            f"{runner.path}: its output for a blank image is not a probability vector over its {classes} "
            f"classes ({summary}); serve reports outputs as probabilities: end the model with a softmax"
        )


def serve(
    model_path,
    config: ServeConfig = ServeConfig(),
    on_ready: Optional[Callable[[ServeInfo], None]] = None,
) -> None:
    """Load `model_path` (run as `config.runner` says), listen on `config.host:config.port` and
    serve until SIGTERM/SIGINT.

    On a signal the server stops accepting connections, finishes the requests in flight
    (at most `shutdown_timeout_s`), drains the batcher and returns normally.
    """
    import uvicorn

    from edgecnn.runtime import Runner

    started = time.perf_counter()
    name = _check_name(config.name or default_model_name(model_path))
    runner = Runner(model_path, config.runner)
    warm_up(runner)
    sock = _listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def ready():
        if on_ready is not None:
            on_ready(
                ServeInfo(
                    url, name, runner.provider, config.max_batch_size, time.perf_counter() - started, _http_stack()
                )
            )

    app = create_app(runner, config, name=name, on_ready=ready)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service = app.state.service
            service.stopping = True  # /ready and new inference answer 503 while the requests in flight finish
            first = service.stop_requested is None
            if first:
                service.stop_requested = time.monotonic()
            drain = min(config.drain_delay_s, config.shutdown_timeout_s)
            if first and sig == signal.SIGTERM and drain > 0:  # keep listening a moment: 503s, not refused connections
                timer = threading.Timer(drain, self._stop_listening, (sig, frame))
                timer.daemon = True
                timer.start()
                return
            self._stop_listening(sig, frame)

        def _stop_listening(self, sig, frame):
            self.config.timeout_graceful_shutdown = app.state.service.shutdown_left()
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            access_log=False,
            lifespan="on",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=config.shutdown_timeout_s,
            backlog=4096,
            http=http_protocol(config, app.state.service.metrics.refused),
            h11_max_incomplete_event_size=config.max_header_bytes,
        )
    )
    # uvicorn re-raises the signal it shut down for once it is done; answering it with a
    # handler of our own turns a graceful stop into a normal return (exit code 0).
    main = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise EdgecnnError(f"the server on {url} did not start; see the log lines above")
    if app.state.service.batcher.abandoned:  # joining its thread at exit would overrun --shutdown-timeout
        log.warning(
            "a model run was still going %.1f s after the signal (--shutdown-timeout); exiting without it",
            config.shutdown_timeout_s,
        )
        logging.shutdown()
        os._exit(0)


def _http_stack() -> str:
    """What uvicorn's "auto" picks: httptools and uvloop when installed (much faster), else h11 and asyncio."""
    from importlib.util import find_spec

    parser = "httptools" if find_spec("httptools") else "h11"
    return (
        f"{parser} + uvloop" if find_spec("uvloop") else f'{parser} + asyncio (faster: pip install "edgecnn[uvloop]")'
    )


def _ignore(signum, frame) -> None:
    pass


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise EdgecnnError(
            f"--host {host}: cannot resolve it ({exc.strerror}); use an address such as 127.0.0.1"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        raise EdgecnnError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or stop the other server"
        ) from None
    sock.set_inheritable(True)
    return sock
