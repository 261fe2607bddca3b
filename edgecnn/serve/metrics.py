"""Server metrics: counters and histograms rendered in Prometheus' text format.

Triton's metric names where they fit (`nv_inference_*`), `edgecnn_*` for the rest.
Updated on the event loop only, so no locks.
"""

from __future__ import annotations

from bisect import bisect_left

from edgecnn.serve.batching import BatchReport

_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, bounds):
        self.bounds, self.counts, self.sum, self.count = bounds, [0] * (len(bounds) + 1), 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, "+Inf"), self.counts):
            total += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {total}')
        return out + [f"{name}_sum{{{labels}}} {self.sum:.6f}", f"{name}_count{{{labels}}} {self.count}"]


class _ModelCounters:
    """One model's inference counters and histograms (every version of it together)."""

    def __init__(self):
        self.success = self.failure = self.rows = self.batches = self.failed_batches = 0
        self.request_us = self.queue_us = self.compute_us = 0
        self.latency, self.queue, self.compute = _Histogram(_SECONDS), _Histogram(_SECONDS), _Histogram(_SECONDS)
        self.batch_size = _Histogram(_ROWS)
        self.version = 0  # the version answering now; 0: none
        self.loads: dict[str, int] = {}  # loaded / refused / removed / unloaded -> count


class Metrics:
    """Counters and histograms of the whole server, labelled by model, rendered as Prometheus text.

    Updated on the event loop only. HTTP status counts and admission refusals are server-wide;
    inference counters are per model (label model="NAME")."""

    def __init__(self, model_name: str = ""):
        self.models: dict[str, _ModelCounters] = {}
        if model_name:
            self.model(model_name)
        self.requests: dict[tuple[str, int], int] = {}
        self.refusals: dict[str, int] = {}  # admission control: why connections or requests were refused

    def model(self, name: str) -> _ModelCounters:
        counters = self.models.get(name)
        if counters is None:
            counters = self.models[name] = _ModelCounters()
        return counters

    def refused(self, reason: str) -> None:
        """Count a connection or request refused or dropped by admission control (edgecnn.serve.admission)."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def loaded(self, model: str, outcome: str, version: int = 0) -> None:
        """Count a model load's outcome (loaded, refused, removed, unloaded); `version`: the one serving now."""
        counters = self.model(model)
        counters.loads[outcome] = counters.loads.get(outcome, 0) + 1
        counters.version = version

    def request(self, endpoint: str, status: int, seconds: float, inference: bool, model: str = "") -> None:
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if inference and model in self.models:
            counters = self.models[model]
            counters.latency.observe(seconds)
            if status == 200:
                counters.success += 1
                counters.request_us += int(seconds * 1e6)
            else:
                counters.failure += 1

    def batch(self, model: str, report: BatchReport) -> None:
        counters = self.model(model)
        counters.batch_size.observe(report.rows)
        counters.compute.observe(report.compute_seconds)
        for q in report.queue_seconds:
            counters.queue.observe(q)
        if not report.ok:
            counters.failed_batches += 1
            return
        counters.rows += report.rows
        counters.batches += 1
        counters.queue_us += int(sum(report.queue_seconds) * 1e6)
        counters.compute_us += int(report.compute_seconds * 1e6)

    def render(self, queue_depths: dict[str, int]) -> str:
        """Prometheus text; queue_depths: model name -> requests waiting now."""
        out = []
        models = sorted(self.models.items())

        def metric(name, kind, help_text, samples):
            out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

        def per_model(name, kind, help_text, value_of):
            metric(name, kind, help_text, [f'{name}{{model="{m}"}} {value_of(m, c)}' for m, c in models])

        for name, kind, help_text, field in (
            ("nv_inference_request_success", "counter", "Successful inference requests", "success"),
            ("nv_inference_request_failure", "counter", "Failed inference requests", "failure"),
            ("nv_inference_count", "counter", "Inferences performed (rows; a batch of N counts N)", "rows"),
            ("nv_inference_exec_count", "counter", "Model runs (batches) performed", "batches"),
            (
                "nv_inference_request_duration_us",
                "counter",
                "Cumulative successful request duration (us)",
                "request_us",
            ),
            (
                "nv_inference_queue_duration_us",
                "counter",
                "Cumulative time requests waited in the queue (us)",
                "queue_us",
            ),
            ("nv_inference_compute_infer_duration_us", "counter", "Cumulative model run time (us)", "compute_us"),
        ):
            per_model(name, kind, help_text, lambda m, c, field=field: getattr(c, field))
        for name in ("nv_inference_pending_request_count", "edgecnn_queue_depth"):
            per_model(name, "gauge", "Requests waiting in the queue", lambda m, c: queue_depths.get(m, 0))
        per_model(
            "edgecnn_batch_failures_total",
            "counter",
            "Model runs that raised (their requests got 500)",
            lambda m, c: c.failed_batches,
        )
        per_model(
            "edgecnn_model_version", "gauge", "The version of the model answering now (0: none)", lambda m, c: c.version
        )
        metric(
            "edgecnn_model_loads_total",
            "counter",
            "Model versions loaded, refused (unreadable or failed verification), removed or unloaded, by model",
            [
                f'edgecnn_model_loads_total{{model="{m}",outcome="{o}"}} {n}'
                for m, c in models
                for o, n in sorted(c.loads.items())
            ],
        )
        metric(
            "edgecnn_http_requests_total",
            "counter",
            "HTTP requests by endpoint and status code",
            [
                f'edgecnn_http_requests_total{{endpoint="{e}",code="{c}"}} {n}'
                for (e, c), n in sorted(self.requests.items())
            ],
        )
        metric(
            "edgecnn_refused_total",
            "counter",
            "Connections and requests refused or dropped by admission control, "
            "by reason (client_gone: the caller hung up while queued; its rows never ran)",
            [f'edgecnn_refused_total{{reason="{r}"}} {n}' for r, n in sorted(self.refusals.items())],
        )
        for name, field, help_text in (
            ("edgecnn_request_duration_seconds", "latency", "Inference request latency, body read to response (s)"),
            ("edgecnn_queue_duration_seconds", "queue", "Time a request waited for its batch to start (s)"),
            ("edgecnn_inference_duration_seconds", "compute", "Model run time per batch (s)"),
            ("edgecnn_batch_size", "batch_size", "Rows per model run"),
        ):
            metric(
                name,
                "histogram",
                help_text,
                [line for m, c in models for line in getattr(c, field).lines(name, f'model="{m}"')],
            )
        return "\n".join(out) + "\n"
