"""The wrapper every `edgecnn serve` route goes through: each kind of failure becomes its HTTP
status with a one-line JSON error, every call is counted in /metrics and timed (Server-Timing),
and a connection the server is about to close is told so."""

from __future__ import annotations

import logging
import time
from typing import Optional


from edgecnn.serve.admission import ClientGone, OverBudget, check_host
from edgecnn.serve.batching import QueueFull
from edgecnn.errors import EdgecnnError, ImageTooLarge, first_line
from edgecnn.serve.protocol import ProtocolError

log = logging.getLogger("edgecnn.serve")


def bytes_response(status: int, content: bytes, media_type: str, headers: Optional[dict] = None):
    from starlette.responses import Response

    return Response(content, status_code=status, media_type=media_type, headers=headers)


def json_response(status: int, obj, headers: Optional[dict] = None):
    import json

    return bytes_response(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json", headers)


class ModelOutputError(Exception):
    """The model answered NaN or infinity for this request's input: 500 for it, the server goes on."""


class ShuttingDown(Exception):
    """A request that arrived after SIGTERM, during the drain delay: 503, go elsewhere."""


def error_response(status: int, message: str, headers: Optional[dict] = None):
    return json_response(status, {"error": message}, headers)


def endpoint(server, label: str, method, inference: bool = False, model: bool = False):
    """Wrap a handler: errors become {"error": ...} with the right status; every call is counted.

    server: the `edgecnn.serve.repository.Repository`. model: a /v2/models/{name}/... route: the handler
    is called as method(service, request, version) on the version serving now, held until it returns.
    """

    from starlette.requests import ClientDisconnect

    async def handler(request):
        start = time.perf_counter()
        request.state.ticket = ticket = server.budget.ticket()
        service = version = None
        try:
            check_host(request.headers, server.hosts, server.config.host)  # every route: no DNS rebinding
            if inference and server.stopping:  # draining after SIGTERM: new work goes elsewhere
                raise ShuttingDown("the server is shutting down; retry on another replica")
            if model:
                service = server.service(request.path_params["name"])
                version = service.acquire(request)
                response = await method(service, request, version)
            else:
                response = await method(request)
        except ProtocolError as exc:
            response = error_response(exc.status, str(exc), {"Retry-After": "1"} if exc.status == 503 else None)
        except QueueFull as exc:
            response = error_response(503, f"{exc}; retry after a second", {"Retry-After": "1"})
        except ModelOutputError as exc:  # counted as a 500 below, like a failed model run
            response = error_response(500, str(exc))
        except ShuttingDown as exc:
            server.metrics.refused("shutting_down")
            response = error_response(503, str(exc), {"Retry-After": "1"})
        except OverBudget as exc:
            server.metrics.refused("inflight_bytes")
            response = error_response(503, str(exc), {"Retry-After": "1"})
        except ImageTooLarge as exc:  # over the pixel limit: a decompression bomb or simply too large
            response = error_response(413, str(exc))
        except EdgecnnError as exc:  # ImageError: undecodable image; a refused model load
            response = error_response(400, str(exc))
        except ClientDisconnect:  # the client went away mid-upload: nobody to answer, nothing failed here
            response = error_response(499, "client disconnected")
        except ClientGone:  # it hung up while queued: its rows were dropped before the model run
            server.metrics.refused("client_gone")
            response = error_response(499, "client disconnected")
        except Exception as exc:  # a failed model run, or a bug: this request fails, the server goes on
            log.exception("request to %s failed", request.url.path)
            response = error_response(500, f"inference failed: {first_line(exc)}")
        finally:
            ticket.release()
            if version is not None:
                version.release()
        elapsed = time.perf_counter() - start
        response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.3f}"  # W3C Server Timing: the page shows it
        if server.stopping:  # no keep-alive reuse of a connection the server is about to close
            response.headers["Connection"] = "close"
        server.metrics.request(label, response.status_code, elapsed, inference, service.name if service else "")
        return response

    return handler
