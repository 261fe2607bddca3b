"""`edgecnn serve`: models over HTTP, KServe v2 / Open Inference Protocol, dynamic batching.

Endpoints (``{name}`` is the model's name; every ``/v2/models/{name}/...`` path also
answers under ``/v2/models/{name}/versions/V/...``, V being the version serving now):

    GET  /v2                         server metadata (extensions: binary_tensor_data, classification,
                                     model_repository)
    GET  /v2/health/live, /ready     200 when alive / ready
    GET  /v2/models/{name}           model metadata: inputs, outputs, datatypes, shapes (-1: batch)
    GET  /v2/models/{name}/ready     200 when the model is ready
    POST /v2/models/{name}/infer     v2 tensors, JSON or Triton's binary-data extension
    POST /v2/models/{name}/classify  an encoded image (body or multipart form) -> top-k labels
    POST /v2/repository/index        every model with its version and state (refused updates: why)
    POST /v2/repository/models/{name}/load, /unload   with --model-control explicit (Triton's extension)
    GET  /metrics                    Prometheus text (Triton's metric names where they fit)
    GET  /openapi.json               OpenAPI 3 description of the JSON endpoints

Requests go through `edgecnn.serve.batching.Batcher`; tensors are decoded and encoded by
`edgecnn.serve.protocol`. Device path: onnxruntime, Starlette and uvicorn, never TensorFlow.

Here: the app (routes, each with its OpenAPI operation) and the process (uvicorn, signals,
drain). Beside it: the models and their updates (repository.py), the request handling
(service.py), the config (config.py), the wrapper that maps failures to statuses (endpoints.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from edgecnn import __version__
from edgecnn.serve.admission import http_protocol
from edgecnn.errors import EdgecnnError
from edgecnn.serve.protocol import ProtocolError
from edgecnn.serve.repository import Repository, warm_up  # noqa: F401  (warm_up: part of this module's API)
from edgecnn.serve import openapi as oa

from edgecnn.serve.endpoints import error_response, json_response, bytes_response, endpoint
from edgecnn.serve.config import ServeConfig, ServeInfo, check_name, default_model_name
from edgecnn.serve.service import Service

log = logging.getLogger("edgecnn.serve")


# -- the app -------------------------------------------------------------------------------
def create_app(
    models,
    config: ServeConfig = ServeConfig(),
    name: Optional[str] = None,
    on_ready: Optional[Callable[[], None]] = None,
):
    """The Starlette app serving `models`: an `edgecnn.serve.repository.Repository`, or one runner (an
    `edgecnn.runtime.Runner`, or anything with its API) served as version 1.

    name: the runner's name in URLs (default: `config.name`, else the model file's folder).
    The batchers (and the watcher, with config.watch) start with the app's lifespan and drain on shutdown.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    if isinstance(models, Repository):
        server = models
    else:
        name = check_name(name or config.name or default_model_name(getattr(models, "path", "model")))
        server = Repository.of_runner(models, config, name)
    config = server.config

    async def server_metadata(request):
        extensions = ["binary_tensor_data", "classification", "model_repository"]
        return json_response(200, {"name": "edgecnn", "version": __version__, "extensions": extensions})

    async def live(request):
        return bytes_response(200, b"", "application/json")

    async def ready(request):
        if server.stopping:
            return error_response(503, "the server is shutting down")
        return bytes_response(200, b"", "application/json")

    async def model_ready(service, request, version):
        return await ready(request)

    async def model_metadata(service, request, version):
        return json_response(200, version.metadata(service.name))

    async def metrics(request):
        return bytes_response(
            200, server.metrics.render(server.queue_depths()).encode(), "text/plain; version=0.0.4; charset=utf-8"
        )

    async def repository_index(request):
        return json_response(200, server.index())

    async def repository_load(request):
        _check_control(request, config)
        await _no_overrides(request)
        await server.load(request.path_params["name"])
        return bytes_response(200, b"", "application/json")

    async def repository_unload(request):
        _check_control(request, config)
        await server.unload(request.path_params["name"])
        return bytes_response(200, b"", "application/json")

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    top_k = {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 5}}
    image_body = {"image/*": {"schema": oa.BINARY}, "multipart/form-data": {"schema": oa.obj((), image=oa.BINARY)}}
    # path under /v2/models/{name}, metrics label, handler, verb, inference?, its OpenAPI operation (None: an alias)
    model_routes = (
        (
            "/infer",
            "infer",
            Service.infer,
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
            Service.classify,
            "POST",
            True,
            oa.post(
                "Top-k labels for one encoded image (JPEG, PNG, ...); /predict is an alias",
                image_body,
                oa.reply("best classes first", oa.ref("Classification")),
                (top_k,),
            ),
        ),
        ("/predict", "classify", Service.classify, "POST", True, None),
        ("/ready", "model_ready", model_ready, "GET", False, oa.get("Model readiness", oa.reply("ready"))),
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
    paths = {
        model.replace("{name}", each) + path: {verb.lower(): op}
        for each in server.models
        for path, _, _, verb, _, op in model_routes
        if op
    }
    paths.update({path: {"get": op} for path, _, _, op in server_routes if op})
    document = oa.document(", ".join(server.models), paths)

    async def openapi(request):
        return json_response(200, document)

    routes = []
    for path, label, method, verb, inference, _ in model_routes:
        handler = endpoint(server, label, method, inference, model=True)
        routes += [Route(model + path, handler, methods=[verb]), Route(versioned + path, handler, methods=[verb])]
    for path, label, method, _ in server_routes:
        routes.append(Route(path, endpoint(server, label, method or openapi), methods=["GET"]))
    routes.append(
        Route("/v2/repository/index", endpoint(server, "repository_index", repository_index), methods=["POST"])
    )
    if config.model_control == "explicit":  # Triton's repository extension: load and unload
        for action, method in (("load", repository_load), ("unload", repository_unload)):
            routes.append(
                Route(
                    f"/v2/repository/models/{{name}}/{action}",
                    endpoint(server, f"repository_{action}", method),
                    methods=["POST"],
                )
            )
    if config.ui and len(server.models) == 1:  # the try-it page: static, posts to /classify like any client
        from edgecnn.serve.page import page

        first = server.first
        ui_page = page(first.name, first.current.meta, first.current.runner.provider, config.default_top_k)

        async def ui(request):
            return bytes_response(200, ui_page.body, "text/html; charset=utf-8", ui_page.headers)

        routes.append(Route("/", endpoint(server, "ui", ui), methods=["GET"]))

    async def http_error(request, exc):
        server.metrics.request("other", exc.status_code, 0.0, False)
        return error_response(
            exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", getattr(exc, "headers", None)
        )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await server.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            server.stopping = True
            await server.stop(server.shutdown_left())

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.server = server
    app.state.service = server.first if server.models else None
    return app


def _check_control(request, config: ServeConfig) -> None:
    """Load and unload: a loopback caller, or the bearer of --control-token when one is set."""
    import hmac
    import ipaddress

    if config.control_token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # the scheme is case-insensitive (RFC 9110, 11.1); the token is compared in constant time
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.control_token.encode()):
            raise ProtocolError("model control needs the header Authorization: Bearer <--control-token>", 401)
        return
    client = request.client.host if request.client is not None else ""
    try:
        loopback = ipaddress.ip_address(client).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ProtocolError(
            "model control is for loopback callers only; start the server with --control-token to allow others", 403
        )


_LOAD_BODY_BYTES = 64 * 1024


async def _no_overrides(request) -> None:
    """Triton's load may carry a config or files in its body ({"parameters": {...}}); this server loads
    a model from its folder only, so a load asking for more is refused (400), not done without them."""
    from edgecnn.serve.protocol import json_object

    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOAD_BODY_BYTES:
            raise ProtocolError(f"the load request's body is more than {_LOAD_BODY_BYTES:,} bytes", 413)
    if not body.strip():
        return
    form = '{"parameters": {...}} or nothing'
    parameters = json_object(body, "the load request's body", form).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"the load request's parameters must be a JSON object: send {form}")
    if parameters:
        names = ", ".join(sorted(repr(str(k)[:40]) for k in parameters)[:5])
        raise ProtocolError(
            f"load with {names}: edgecnn serve loads a model from its folder only (no config or file "
            "overrides); put the files in the model's folder, then load it"
        )


# -- running it ----------------------------------------------------------------------------
def serve(
    model_path,
    config: ServeConfig = ServeConfig(),
    on_ready: Optional[Callable[[ServeInfo], None]] = None,
    say: Optional[Callable[[str], None]] = None,
) -> None:
    """Load every model under `model_path` (an .onnx file, an export folder or a folder of them; run
    as `config.runner` says), check each on its verification set, listen on `config.host:config.port`
    and serve until SIGTERM/SIGINT. say(line): where start-up notes and update lines go (default: the log).

    On a signal the server stops accepting connections, finishes the requests in flight
    (at most `shutdown_timeout_s`), drains the batchers and returns normally.
    """
    import uvicorn

    started = time.perf_counter()
    server = Repository(config, Path(model_path), say or log.warning)
    for line in server.open():
        server.say(line)
    sock = _listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def ready():
        if on_ready is not None:
            current = [s.current for s in server.models.values() if s.current is not None]
            providers = sorted({v.runner.provider for v in current})
            batch = max((v.batcher.config.max_batch_size for v in current), default=config.max_batch_size)
            on_ready(
                ServeInfo(
                    url,
                    ", ".join(server.models),
                    ", ".join(providers),
                    batch,
                    time.perf_counter() - started,
                    _http_stack(),
                )
            )

    app = create_app(server, config, on_ready=ready)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            server.stopping = True  # /ready and new inference answer 503 while the requests in flight finish
            first = server.stop_requested is None
            if first:
                server.stop_requested = time.monotonic()
            drain = min(config.drain_delay_s, config.shutdown_timeout_s)
            if first and sig == signal.SIGTERM and drain > 0:  # keep listening a moment: 503s, not refused connections
                timer = threading.Timer(drain, self._stop_listening, (sig, frame))
                timer.daemon = True
                timer.start()
                return
            self._stop_listening(sig, frame)

        def _stop_listening(self, sig, frame):
            self.config.timeout_graceful_shutdown = server.shutdown_left()
            super().handle_exit(sig, frame)

    uvi = Server(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            access_log=False,
            lifespan="on",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=config.shutdown_timeout_s,
            backlog=4096,
            http=http_protocol(config, server.metrics.refused),
            h11_max_incomplete_event_size=config.max_header_bytes,
        )
    )
    # uvicorn re-raises the signal it shut down for once it is done; answering it with a
    # handler of our own turns a graceful stop into a normal return (exit code 0).
    main = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        uvi.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not uvi.started:
        raise EdgecnnError(f"the server on {url} did not start; see the log lines above")
    if server.abandoned:  # joining its thread at exit would overrun --shutdown-timeout
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
