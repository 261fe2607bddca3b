"""The request handling of `edgecnn serve`: one `Service` per model answers /infer and /classify
(KServe v2 tensors via `edgecnn.serve.protocol`, encoded images via the one loader) on one `Version` of
the model: the runner, batcher and contract a request started on, held until its answer."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Callable, Optional

import numpy as np

from edgecnn.serve.admission import check_origin, json_cost, wait_or_disconnect
from edgecnn.serve.batching import Batcher, BatchReport
from edgecnn.serve.protocol import (
    HEADER_LENGTH,
    OutputRequest,
    OutputTensor,
    ProtocolError,
    check_input,
    classification,
    datatype_of,
    decode_request,
    decompress,
    encode_response,
    multipart_file,
    parse_header_length,
)
from edgecnn.runtime import top_k

from edgecnn.serve.endpoints import ModelOutputError, json_response, bytes_response
from edgecnn.serve.config import ServeConfig


log = logging.getLogger("edgecnn.serve")
_PARSE_ON_LOOP_BYTES = 64 * 1024  # /infer bodies up to this are parsed on the event loop (well under 1 ms)
_DIGITS = re.compile(r"[0-9]+")  # ASCII digits only: "²".isdigit() is true
_TOP_K = re.compile(r"[0-9]{1,6}")  # ASCII digits only ("²".isdigit() is true), and not 5,000 of them

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"  # Triton's model states


class Version:
    """One loaded version of a model: its runner, batcher and contract.

    A request holds the version it started on (`users`) until it is answered, so an answer never
    mixes two versions; a version swapped out is `retire`d: it finishes its queue, then frees its
    session."""

    def __init__(
        self,
        number: int,
        runner,
        config: ServeConfig,
        on_batch: Optional[Callable[[BatchReport], None]] = None,
        verified=None,
        fingerprint=None,
    ):
        self.number, self.runner = number, runner
        self.meta = runner.metadata
        self.input_datatype = datatype_of(runner.numpy_input_dtype)
        self.input_shape = (None, *self.meta.input_shape(None)[1:])
        self.batcher = Batcher(runner.run, config.batch_config(), on_batch=on_batch)
        self.max_batch_size = config.max_batch_size  # this version's own (tune --serve's, unless typed)
        self.verified = verified  # edgecnn.verify.VerifyResult of the start-up or update check; None: not checked
        self.fingerprint = fingerprint  # of the files it was loaded from (edgecnn.serve.repository)
        self.output_name = runner.output_name
        self.users = 0
        self._drained: Optional[asyncio.Event] = None

    @property
    def tag(self) -> str:
        return str(self.number)

    def live(self) -> tuple:
        """(runner, batcher) of a request on this version after it read its body: 503 when the version was
        swapped out and retired meanwhile (its request took longer than --shutdown-timeout to arrive)."""
        runner, batcher = self.runner, self.batcher
        if runner is None or batcher is None:
            raise ProtocolError(
                f"version {self.tag} was swapped out while this request was being read, and its wait "
                "(--shutdown-timeout) ran out; send the request again",
                503,
            )
        return runner, batcher

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self._drained is not None:
            self._drained.set()

    async def retire(self, timeout: Optional[float] = None) -> None:
        """Wait for the requests that started on this version, finish its queue, free its session."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.users:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        await self.batcher.stop(None if deadline is None else max(0.1, deadline - time.monotonic()))
        self.runner = self.batcher = None  # the onnxruntime session goes with the last reference

    def metadata(self, name: str) -> dict:
        runner = self.runner
        return {
            "name": name,
            "versions": [self.tag],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": runner.input_name, "datatype": self.input_datatype, "shape": [-1, *self.input_shape[1:]]}
            ],
            "outputs": [{"name": runner.output_name, "datatype": "FP32", "shape": [-1, self.meta.num_classes]}],
            "parameters": {
                "class_names": list(self.meta.class_names),
                "provider": runner.provider,
                "variant": self.meta.variant,
                "max_batch_size": self.max_batch_size,
            },
        }


class Service:
    """One model: the version answering now (None: unavailable, with `reason`), the last version
    refused and why, and the handlers. `server`: what the models share (edgecnn.serve.repository.Repository:
    config, metrics, byte budget, decode pool)."""

    def __init__(self, name: str, server, source=None):
        self.name, self.server, self.source = name, server, source
        self.config: ServeConfig = server.config
        self.metrics = server.metrics
        self.metrics.model(name)
        self.current: Optional[Version] = None
        self.state, self.reason = UNAVAILABLE, "not loaded yet"
        self.last_number = 0  # the highest version number served or refused so far (never given twice)
        self.refused: Optional[tuple[int, str]] = None  # (version, why) of the last refused update
        self.refused_fingerprint = None  # files already refused: not tried again until they change

    # -- the version a request runs on ---------------------------------------------------
    @property
    def batcher(self) -> Batcher:
        return self._serving().batcher

    @property
    def runner(self):
        return self._serving().runner

    def _serving(self) -> Version:
        if self.current is None:
            raise ProtocolError(f"model {self.name!r} is not available: {self.reason}", 503)
        return self.current

    def acquire(self, request) -> Version:
        """The version this request runs on, held until `version.release()`; 503 when none serves,
        404 for a version other than the one serving."""
        version = self._serving()
        wanted = request.path_params.get("version")
        if wanted is not None and wanted != version.tag:
            raise ProtocolError(
                f"model {self.name!r} has no version {wanted[:20]!r} being served; version {version.tag} is", 404
            )
        version.users += 1
        return version

    def next_number(self) -> int:
        return self.last_number + 1

    def install(self, version: Version) -> Optional[Version]:
        """Serve `version` from the next request on; returns the one it replaces (to retire)."""
        old, self.current = self.current, version
        self.last_number = max(self.last_number, version.number)
        self.state, self.reason = READY, ""
        self.refused = self.refused_fingerprint = None
        self.metrics.loaded(self.name, "loaded", version.number)
        return old

    def take_down(self, reason: str, outcome: str) -> Optional[Version]:
        """Stop serving (folder removed, unloaded); returns the version to retire."""
        old, self.current = self.current, None
        self.state, self.reason = UNAVAILABLE, reason
        self.metrics.loaded(self.name, outcome, 0)
        return old

    def refuse(self, number: int, reason: str, fingerprint) -> None:
        """An update that could not be read or failed verification: the current version keeps serving."""
        self.refused, self.refused_fingerprint = (number, reason), fingerprint
        self.last_number = max(self.last_number, number)  # the log's "refused version N" names one build
        self.metrics.loaded(self.name, "refused", self.current.number if self.current else 0)
        if self.current is None:
            self.state, self.reason = UNAVAILABLE, reason

    def index(self) -> list[dict]:
        """Triton's repository index entries for this model: the version serving, then a refused one."""
        if self.current is not None:
            entries = [{"name": self.name, "version": self.current.tag, "state": READY, "reason": ""}]
        elif self.refused is None or self.state == LOADING:
            entries = [{"name": self.name, "version": "", "state": self.state, "reason": self.reason}]
        else:
            entries = []
        if self.refused is not None and (self.current is None or self.refused[0] > self.current.number):
            entries.append(
                {"name": self.name, "version": str(self.refused[0]), "state": UNAVAILABLE, "reason": self.refused[1]}
            )
        return entries

    def check_request(self, request, kind: str) -> None:
        check_origin(request.headers, kind, self.server.hosts, self.config.host)

    async def body(self, request) -> bytes:
        ticket = request.state.ticket
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if _DIGITS.fullmatch(declared) and (len(declared) > 18 or int(declared) > limit):
            size = f"{int(declared):,}" if len(declared) <= 18 else f"a {len(declared)}-digit number of"
            raise ProtocolError(
                f"the body ({size} bytes) is more than the {limit:,}-byte limit (--max-body-bytes)", 413
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"the body is more than the {limit:,}-byte limit (--max-body-bytes)", 413)
            ticket.reserve(len(chunk))
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding")
        if not encoding:
            return body
        body = decompress(body, encoding, limit)
        ticket.reserve(len(body))
        return body

    async def infer(self, request, version: Version):
        self.check_request(request, "infer")
        body = await self.body(request)
        header_length = request.headers.get(HEADER_LENGTH)
        request.state.ticket.reserve(
            json_cost(body if header_length is None else body[: parse_header_length(header_length)])
        )
        if len(body) <= _PARSE_ON_LOOP_BYTES:  # microseconds: a thread hop would cost more
            req = decode_request(body, header_length, self.config.max_body_bytes)
        else:  # parsed in the decode pool: a large JSON body must not stall the event loop (and /v2/health/live)
            req = await asyncio.get_running_loop().run_in_executor(
                self.server.decode_pool, decode_request, body, header_length, self.config.max_body_bytes
            )
        runner, batcher = version.live()
        rows = check_input(
            req, runner.input_name, version.input_datatype, version.input_shape, self.config.max_request_rows
        )
        request.state.ticket.reserve(rows.nbytes)
        probabilities = _finite(await wait_or_disconnect(request, batcher.submit(rows)))
        outputs = (
            [self._output(version, want, probabilities) for want in req.outputs]
            if req.outputs is not None
            else [OutputTensor(runner.output_name, probabilities, req.binary_output)]
        )
        content, header_length = encode_response(self.name, version.tag, req.id, outputs)
        if header_length is None:
            return bytes_response(200, content, "application/json")
        return bytes_response(
            200, content, "application/octet-stream", {"Inference-Header-Content-Length": str(header_length)}
        )

    def _output(self, version: Version, want: OutputRequest, probabilities: np.ndarray) -> OutputTensor:
        if want.name != version.output_name:
            raise ProtocolError(f"unknown output {want.name!r}: the model's output is {version.output_name!r}")
        if want.classification:
            return OutputTensor(
                want.name,
                classification(probabilities, want.classification, version.meta.class_names),
                want.binary,
                "BYTES",
            )
        return OutputTensor(want.name, probabilities, want.binary)

    async def classify(self, request, version: Version):
        k = request.query_params.get("top_k", str(self.config.default_top_k))
        if not _TOP_K.fullmatch(k) or int(k) < 1:
            raise ProtocolError(f"top_k={k[:20]!r}: expected a whole number of classes, 1 to 999999")
        self.check_request(request, "classify")
        body = await self.body(request)
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/form-data"):
            body = multipart_file(body, content_type)
        if not body:
            raise ProtocolError("no image: send JPEG/PNG bytes as the body or as the multipart form field 'image'")
        meta, (runner, batcher) = version.meta, version.live()
        image = await asyncio.get_running_loop().run_in_executor(
            self.server.decode_pool, runner.load, body, self.config.max_pixels
        )
        probabilities = _finite(await wait_or_disconnect(request, batcher.submit(runner.prepare([image]))))
        indices, values = top_k(probabilities, int(k))
        predictions = [
            {"label": meta.class_names[int(i)], "index": int(i), "probability": float(p)}
            for i, p in zip(indices[0], values[0])
        ]
        return json_response(200, {"model_name": self.name, "model_version": version.tag, "predictions": predictions})


def _finite(probabilities: np.ndarray) -> np.ndarray:
    if not np.isfinite(probabilities).all():
        bad = int((~np.isfinite(probabilities)).any(axis=tuple(range(1, probabilities.ndim))).sum())
        raise ModelOutputError(
            f"the model answered NaN or infinity for {bad} of {len(probabilities)} input(s); "
            "this input is outside what the model handles (check the model with edgecnn verify)"
        )
    return probabilities
