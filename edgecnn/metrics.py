"""Server metrics: counters and histograms rendered in Prometheus' text format.

Triton's metric names where they fit (`nv_inference_*`), `edgecnn_*` for the rest.
Updated on the event loop only, so no locks.
"""

from __future__ import annotations

from bisect import bisect_left

from edgecnn.batching import BatchReport

VERSION = "1"
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


class Metrics:
    """Counters and histograms, updated on the event loop, rendered as Prometheus text."""

    def __init__(self, model_name: str):
        self.labels = f'model="{model_name}",version="{VERSION}"'
        self.requests: dict[tuple[str, int], int] = {}
        self.success = self.failure = self.rows = self.batches = self.failed_batches = 0
        self.request_us = self.queue_us = self.compute_us = 0
        self.latency, self.queue, self.compute = _Histogram(_SECONDS), _Histogram(_SECONDS), _Histogram(_SECONDS)
        self.batch_size = _Histogram(_ROWS)
        self.refusals: dict[str, int] = {}  # admission control: why connections or requests were refused

    def refused(self, reason: str) -> None:
        """Count a connection or request refused or dropped by admission control (edgecnn.admission)."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def request(self, endpoint: str, status: int, seconds: float, inference: bool) -> None:
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if inference:
            self.latency.observe(seconds)
            if status == 200:
                self.success += 1
                self.request_us += int(seconds * 1e6)
            else:
                self.failure += 1

    def batch(self, report: BatchReport) -> None:
        self.batch_size.observe(report.rows)
        self.compute.observe(report.compute_seconds)
        for q in report.queue_seconds:
            self.queue.observe(q)
        if not report.ok:
            self.failed_batches += 1
            return
        self.rows += report.rows
        self.batches += 1
        self.queue_us += int(sum(report.queue_seconds) * 1e6)
        self.compute_us += int(report.compute_seconds * 1e6)

    def render(self, queue_depth: int) -> str:
        lab = self.labels
        out = []

        def metric(name, kind, help_text, samples):
            out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

        def one(name, kind, help_text, value):
            metric(name, kind, help_text, [f"{name}{{{lab}}} {value}"])

        one("nv_inference_request_success", "counter", "Successful inference requests", self.success)
        one("nv_inference_request_failure", "counter", "Failed inference requests", self.failure)
        one("nv_inference_count", "counter", "Inferences performed (rows; a batch of N counts N)", self.rows)
        one("nv_inference_exec_count", "counter", "Model runs (batches) performed", self.batches)
        one(
            "nv_inference_request_duration_us",
            "counter",
            "Cumulative successful request duration (us)",
            self.request_us,
        )
        one(
            "nv_inference_queue_duration_us",
            "counter",
            "Cumulative time requests waited in the queue (us)",
            self.queue_us,
        )
        one("nv_inference_compute_infer_duration_us", "counter", "Cumulative model run time (us)", self.compute_us)
        one("nv_inference_pending_request_count", "gauge", "Requests waiting in the queue", queue_depth)
        one("edgecnn_queue_depth", "gauge", "Requests waiting in the queue", queue_depth)
        one(
            "edgecnn_batch_failures_total",
            "counter",
            "Model runs that raised (their requests got 500)",
            self.failed_batches,
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
        for name, hist, help_text in (
            ("edgecnn_request_duration_seconds", self.latency, "Inference request latency, body read to response (s)"),
            ("edgecnn_queue_duration_seconds", self.queue, "Time a request waited for its batch to start (s)"),
            ("edgecnn_inference_duration_seconds", self.compute, "Model run time per batch (s)"),
            ("edgecnn_batch_size", self.batch_size, "Rows per model run"),
        ):
            metric(name, "histogram", help_text, hist.lines(name, lab))
        return "\n".join(out) + "\n"
