"""The request handling of `edgecnn serve`: one `Service` per model holds the runner, the batcher,
the decode pool and the byte budget, and answers /infer and /classify (KServe v2 tensors via
`edgecnn.protocol`, encoded images via the one loader)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from edgecnn.admission import Budget, allowed_host_names, check_origin, json_cost, wait_or_disconnect
from edgecnn.batching import Batcher
from edgecnn.metrics import VERSION, Metrics
from edgecnn.protocol import (
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
    top_k,
)

from edgecnn.endpoints import ModelOutputError, _json, _response
from edgecnn.serve_config import ServeConfig


log = logging.getLogger("edgecnn.serve")
_PARSE_ON_LOOP_BYTES = 64 * 1024  # /infer bodies up to this are parsed on the event loop (well under 1 ms)
_DIGITS = re.compile(r"[0-9]+")  # ASCII digits only: "²".isdigit() is true
_TOP_K = re.compile(r"[0-9]{1,6}")  # ASCII digits only ("²".isdigit() is true), and not 5,000 of them


class Service:
    """What the handlers share: the runner, the batcher, the metrics and the model's contract."""

    def __init__(self, runner, config: ServeConfig, name: str):
        self.runner, self.config, self.name = runner, config, name
        meta = runner.metadata
        self.meta = meta
        self.input_datatype = datatype_of(runner.numpy_input_dtype)
        self.input_shape = (None, *meta.input_shape(None)[1:])
        self.metrics = Metrics(name)
        self.batcher = Batcher(runner.run, config.batch_config(), on_batch=self.metrics.batch)
        self.decode_pool = ThreadPoolExecutor(max(1, config.decode_threads), thread_name_prefix="edgecnn-decode")
        self.budget = Budget(config.max_inflight_bytes)
        self.hosts = allowed_host_names(config.host, config.allowed_hosts)
        self.stopping = False
        self.stop_requested: Optional[float] = None  # time.monotonic() of SIGTERM/SIGINT

    def shutdown_left(self) -> float:
        """Seconds left of --shutdown-timeout since the signal (all of it without one)."""
        elapsed = 0.0 if self.stop_requested is None else time.monotonic() - self.stop_requested
        return max(0.1, self.config.shutdown_timeout_s - elapsed)

    def model_metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": self.runner.input_name, "datatype": self.input_datatype, "shape": [-1, *self.input_shape[1:]]}
            ],
            "outputs": [{"name": self.runner.output_name, "datatype": "FP32", "shape": [-1, self.meta.num_classes]}],
            "parameters": {
                "class_names": list(self.meta.class_names),
                "provider": self.runner.provider,
                "variant": self.meta.variant,
                "max_batch_size": self.config.max_batch_size,
            },
        }

    def check_model(self, request) -> None:
        params = request.path_params
        if params["name"] != self.name:
            raise ProtocolError(f"unknown model {params['name']!r}: this server serves {self.name!r}", 404)
        version = params.get("version")
        if version is not None and version != VERSION:
            raise ProtocolError(f"model {self.name!r} has no version {version!r}; it has version {VERSION}", 404)

    def check_request(self, request, kind: str) -> None:
        check_origin(request.headers, kind, self.hosts, self.config.host)

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

    async def infer(self, request):
        self.check_model(request)
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
                self.decode_pool, decode_request, body, header_length, self.config.max_body_bytes
            )
        rows = check_input(
            req, self.runner.input_name, self.input_datatype, self.input_shape, self.config.max_request_rows
        )
        request.state.ticket.reserve(rows.nbytes)
        probabilities = _finite(await wait_or_disconnect(request, self.batcher.submit(rows)))
        outputs = (
            [self._output(want, probabilities) for want in req.outputs]
            if req.outputs is not None
            else [OutputTensor(self.runner.output_name, probabilities, req.binary_output)]
        )
        content, header_length = encode_response(self.name, VERSION, req.id, outputs)
        if header_length is None:
            return _response(200, content, "application/json")
        return _response(
            200, content, "application/octet-stream", {"Inference-Header-Content-Length": str(header_length)}
        )

    def _output(self, want: OutputRequest, probabilities: np.ndarray) -> OutputTensor:
        if want.name != self.runner.output_name:
            raise ProtocolError(f"unknown output {want.name!r}: the model's output is {self.runner.output_name!r}")
        if want.classification:
            return OutputTensor(
                want.name,
                classification(probabilities, want.classification, self.meta.class_names),
                want.binary,
                "BYTES",
            )
        return OutputTensor(want.name, probabilities, want.binary)

    async def classify(self, request):

        self.check_model(request)
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
        meta = self.meta
        image = await asyncio.get_running_loop().run_in_executor(
            self.decode_pool, self.runner.load, body, self.config.max_pixels
        )
        probabilities = _finite(await wait_or_disconnect(request, self.batcher.submit(self.runner.prepare([image]))))
        indices, values = top_k(probabilities, int(k))
        predictions = [
            {"label": meta.class_names[int(i)], "index": int(i), "probability": float(p)}
            for i, p in zip(indices[0], values[0])
        ]
        return _json(200, {"model_name": self.name, "model_version": VERSION, "predictions": predictions})


def _finite(probabilities: np.ndarray) -> np.ndarray:
    if not np.isfinite(probabilities).all():
        bad = int((~np.isfinite(probabilities)).any(axis=tuple(range(1, probabilities.ndim))).sum())
        raise ModelOutputError(
            f"the model answered NaN or infinity for {bad} of {len(probabilities)} input(s); "
            "this input is outside what the model handles (check the model with edgecnn verify)"
        )
    return probabilities
