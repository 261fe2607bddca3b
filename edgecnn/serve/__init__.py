"""`edgecnn serve`: ONNX models over HTTP (KServe v2 / Open Inference Protocol), dynamic batching.

One module per idea, from the process down to the bytes on the wire:

    server.py      the app (routes, each with its OpenAPI operation) and the process:
                   `create_app`, `serve` (uvicorn, signals, drain)
    config.py      `ServeConfig` (how it listens, batches, guards itself), `ServeInfo`;
                   plain dataclasses, cheap to import (the CLI's --help reads the defaults)
    repository.py  the models served and how they change while it runs (polling, load/unload)
    service.py     the request handling of one model: /infer and /classify on one version
    endpoints.py   the wrapper every route goes through: failures -> statuses, metrics, timing
    admission.py   what a connection or a request may cost before it is refused
    batching.py    dynamic batching: many callers' rows -> one model run -> each its rows
    protocol.py    the KServe v2 wire format, JSON and Triton's binary extension (pure functions)
    metrics.py     counters and histograms in Prometheus' text format (/metrics)
    openapi.py     the OpenAPI 3 building blocks (/openapi.json)
    page.py        the try-it page at GET / (page.html: package data)

Import what you need from its module (``from edgecnn.serve.server import serve``,
``from edgecnn.serve.config import ServeConfig``). This file imports nothing, so that importing
one module, such as the config, does not load the rest. Device path: onnxruntime, Starlette and
uvicorn, never TensorFlow; the modules import Starlette and uvicorn only where they run.
"""
