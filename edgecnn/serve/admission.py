"""Admission control for `edgecnn serve`: what a connection or a request may cost before it is refused.

Two layers, each bounded by a `ServeConfig` field (see docs/RELIABILITY.md):

- `guarded_protocol`: uvicorn's httptools protocol with a connection limit (503 at accept),
  a request-head size limit (431), a deadline for the request head (408; it also closes
  connections that send nothing) and one for the body (408). uvicorn has none of these:
  httptools keeps growing a partial head and an idle connection is held forever.
- `Budget`: bytes held by requests being read, queued or run, across all connections: raw
  body, decompressed body and decoded tensor are reserved as they appear; over the budget
  the request gets 503 with Retry-After and gives its bytes back.
- `check_origin`: the Host header must name this server (DNS rebinding) and a Content-Type, if
  sent, must be a documented one (no text/plain or form posts from web pages).

Device path: the standard library and uvicorn only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from edgecnn.errors import EdgecnnError
from edgecnn.serve.protocol import ProtocolError

log = logging.getLogger("edgecnn.serve")


# Peak bytes json.loads + np.asarray take per JSON value (measured with tracemalloc: 17.5 for small
# ints, 44.4 for floats); a JSON body is charged this per comma before it is parsed.
JSON_BYTES_PER_VALUE = 48


def json_cost(header: bytes) -> int:
    """Bytes to reserve before parsing a JSON request header (an upper estimate)."""
    return len(header) + JSON_BYTES_PER_VALUE * header.count(b",")


DISCONNECT_HOOK = "edgecnn.on_disconnect"  # scope key: what connection_lost calls while a request waits


class OverBudget(Exception):
    """The server holds its byte budget already; the request should be retried later (503)."""


class Budget:
    """Bytes reserved by requests in flight, at most `limit` in all (single event loop, no locks)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def ticket(self) -> "Ticket":
        return Ticket(self)


class Ticket:
    """One request's share of the `Budget`; `release` gives it all back (call it once, in finally)."""

    def __init__(self, budget: Budget):
        self.budget, self.held = budget, 0

    def reserve(self, n: int) -> None:
        """Hold `n` more bytes; `ProtocolError` 413 if this request alone needs more than the budget."""
        budget = self.budget
        if self.held + n > budget.limit:
            raise ProtocolError(
                f"this request needs more than the {budget.limit:,}-byte budget for requests in flight "
                "(--max-inflight-bytes); send tensors as binary data or in smaller requests",
                413,
            )
        if budget.used + n > budget.limit:
            raise OverBudget(
                f"the server holds {budget.used:,} of its {budget.limit:,}-byte budget for requests "
                f"in flight (--max-inflight-bytes); retry after a second"
            )
        budget.used += n
        self.held += n

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0


# -- who may call: Host and Content-Type ----------------------------------------------------
_CONTENT_TYPES = {
    "infer": ("application/json", "application/octet-stream"),
    "classify": ("image/", "application/octet-stream", "multipart/form-data"),
}


def allowed_host_names(bound: str, extra=()) -> frozenset:
    """Host names (no port) a request may name: loopback names, the bound address and `extra`."""
    return frozenset(h.lower().strip("[]") for h in ("localhost", "127.0.0.1", "::1", bound, *extra))


def check_origin(headers, kind: str, hosts: frozenset, bound: str) -> None:
    """The Host header names this server (no DNS rebinding) and a Content-Type, if any, is a documented one
    for `kind` ("infer" or "classify"): text/plain and form posts, which a web page may send without a
    CORS preflight, are refused. Raises `ProtocolError` 400 or 415."""
    check_host(headers, hosts, bound)
    content_type = headers.get("content-type", "").lower()  # none: Triton's client sends none
    if content_type and not content_type.startswith(_CONTENT_TYPES[kind]):
        raise ProtocolError(
            f"Content-Type {content_type!r} is not accepted here; send {' or '.join(_CONTENT_TYPES[kind])}", 415
        )


def check_host(headers, hosts: frozenset, bound: str) -> None:
    """The Host header names this server (no DNS rebinding): every route checks it, metadata and
    metrics too (a rebound page could read them otherwise). Raises `ProtocolError` 400."""
    if len(getattr(headers, "getlist", lambda _name: ())("host")) > 1:  # RFC 9112 3.2: which would it be?
        raise ProtocolError("more than one Host header; send one", 400)
    host = headers.get("host", "").lower()
    if not _host_allowed(_host_name(host), hosts, bound):
        raise ProtocolError(
            f"Host {host[:80]!r} is not this server's address; start it with --allowed-hosts "
            f"{host[:80] or 'NAME'} to accept it",
            400,
        )


def _host_name(header: str) -> str:
    """ "[::1]:8000" -> "::1", "example:80" -> "example" (the port is not checked, as in Django)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _host_allowed(host: str, allowed: frozenset, bound: str) -> bool:
    import ipaddress

    if "*" in allowed or host in allowed:
        return True
    if bound in ("0.0.0.0", "::", ""):  # every local address: IP literals cannot be rebound, names must be allowed
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return True
    return False


def memory_bound(config, classes: int) -> int:
    """Bytes the server may hold beyond the model and one model run, by docs/RELIABILITY.md's
    formula: per connection its head, uvicorn's body buffer and one read; the byte budget; a JSON
    response per connection; the images being decoded. config: a `ServeConfig`."""
    per_connection = config.max_header_bytes + 64 * 1024 + 256 * 1024
    return (
        config.max_connections * per_connection
        + config.max_inflight_bytes
        + config.max_connections * config.max_request_rows * classes * 32
        + config.decode_threads * 4 * config.max_pixels
    )


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n\r\n"
    ).encode() + body


# What `guarded_protocol` uses of uvicorn's private httptools protocol, checked at start-up: the
# versions pinned in pyproject.toml have all of it (a new uvicorn may not).
UVICORN_TESTED = ">=0.55,<0.56"
_PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_message_complete",
    "on_response_complete",
)
_PROTOCOL_ATTRIBUTES = ("connections", "transport", "cycle", "scope", "loop")
_CYCLE_ATTRIBUTES = ("response_started", "response_complete")


def check_uvicorn() -> None:
    """Fail in one line, before serving, if uvicorn's httptools protocol no longer has the methods
    and attributes the guarded protocol overrides or reads."""
    import uvicorn
    from uvicorn.protocols.http import httptools_impl

    protocol, cycle = (
        getattr(httptools_impl, "HttpToolsProtocol", None),
        getattr(httptools_impl, "RequestResponseCycle", None),
    )
    missing = [] if protocol is not None else ["HttpToolsProtocol"]
    missing += [] if cycle is not None else ["RequestResponseCycle"]
    if protocol is not None:
        missing += [f"HttpToolsProtocol.{m}" for m in _PROTOCOL_METHODS if not callable(getattr(protocol, m, None))]
        missing += [f"HttpToolsProtocol.{a}" for a in _PROTOCOL_ATTRIBUTES if a not in _assigned(protocol)]
    if cycle is not None:
        missing += [f"RequestResponseCycle.{a}" for a in _CYCLE_ATTRIBUTES if a not in _assigned(cycle)]
    if missing:
        raise EdgecnnError(
            f"uvicorn {uvicorn.__version__} changed what edgecnn's admission control relies on "
            f'({", ".join(missing)}); install a tested version: pip install "uvicorn{UVICORN_TESTED}"'
        )


def _assigned(cls) -> set[str]:
    """Attribute names a class's methods assign or read on instances (`self.NAME`), from their code."""
    import dis

    names = set()
    for klass in cls.__mro__:
        for value in vars(klass).values():
            code = getattr(value, "__code__", None)
            if code is not None:
                names.update(i.argval for i in dis.get_instructions(code) if i.opname in ("STORE_ATTR", "LOAD_ATTR"))
    return names


def guarded_protocol(config, on_refused=None):
    """uvicorn's HttpToolsProtocol with `config`'s connection, head-size and read-deadline limits.

    config: a `ServeConfig`. on_refused(reason): called for every connection or request refused here.
    Checks first that this uvicorn has what it overrides (`check_uvicorn`).
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    check_uvicorn()

    max_connections, max_head = config.max_connections, config.max_header_bytes
    head_timeout, body_timeout = config.header_timeout_s, config.body_timeout_s

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._head_bytes, self._in_head, self._deadline = 0, True, None
            if len(self.connections) > max_connections:
                self._refuse(
                    503,
                    "Service Unavailable",
                    f"the server holds {max_connections} connections already (--max-connections); retry after a second",
                    "connections",
                )
                return
            self._arm(head_timeout, "the request head did not arrive in time (--header-timeout)", "header_timeout")

        def connection_lost(self, exc):
            self._disarm()
            hook = self.scope.get(DISCONNECT_HOOK) if self.scope else None
            super().connection_lost(exc)
            if hook is not None:
                hook()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self._in_head:
                self._arm(head_timeout, "the request head did not arrive in time (--header-timeout)", "header_timeout")
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head:
                    self._refuse(
                        431,
                        "Request Header Fields Too Large",
                        f"the request head is more than {max_head:,} bytes (--max-header-bytes)",
                        "header_size",
                    )

        def on_message_begin(self) -> None:
            self._in_head, self._head_bytes = True, 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            super().on_headers_complete()
            self._arm(body_timeout, "the request body did not arrive in time (--body-timeout)", "body_timeout")

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self._in_head, self._head_bytes = True, 0
            super().on_response_complete()  # arms uvicorn's keep-alive timeout for the idle connection

        # -- helpers ----------------------------------------------------------------
        def _arm(self, seconds: float, message: str, reason: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._refuse, 408, "Request Timeout", message, reason)

        def _disarm(self) -> None:
            deadline, self._deadline = getattr(self, "_deadline", None), None
            if deadline is not None:
                deadline.cancel()

        def _refuse(self, status: int, reason: str, message: str, why: str) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is None or not cycle.response_started:
                if cycle is not None:
                    cycle.response_started = cycle.response_complete = True  # the app's answer goes nowhere
                self.transport.write(_raw_response(status, reason, message))
            self.transport.close()
            if on_refused is not None:
                on_refused(why)

    return GuardedHttpToolsProtocol


def http_protocol(config, on_refused=None):
    """The guarded protocol when httptools is installed; else uvicorn's h11 with its own head limit only."""
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - edgecnn depends on httptools
        log.warning("httptools is missing: serving with h11, without connection limits or read deadlines")
        return "h11"
    return guarded_protocol(config, on_refused)


async def wait_or_disconnect(request, awaitable):
    """Await `awaitable`; if the client hangs up first, cancel it and raise `ClientGone`.

    Costs nothing per request: the guarded protocol's `connection_lost` calls the hook left in
    the request's scope (without httptools, the request simply runs to the end).
    """
    task = asyncio.current_task()
    gone = []

    def hang_up():
        gone.append(True)
        task.cancel()

    request.scope[DISCONNECT_HOOK] = hang_up
    try:
        return await awaitable
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientGone("the client disconnected while its request waited") from None
    finally:
        request.scope.pop(DISCONNECT_HOOK, None)


class ClientGone(Exception):
    """The caller hung up before its request ran."""
