"""Dynamic batching: many callers' rows -> one model run -> each caller gets exactly its rows.

Requests wait in a bounded queue. One batcher task takes requests in arrival order until
the next one would push the batch past `max_batch_size` rows, or until the oldest waiting
request has waited `max_queue_delay_ms`; then it runs the batch once, in a worker thread
so the event loop keeps serving, and hands each caller its own slice of the result.
Batches are cut at request boundaries, so a request is never split; a request with more
rows than `max_batch_size` runs alone. `max_batch_size=1` turns batching off: every
request runs by itself, one after the other.

Device path: NumPy and the standard library only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgecnn.errors import check_at_least


@dataclass(frozen=True)
class BatchConfig:
    """How requests are merged into model runs."""

    max_batch_size: int = 32  # rows per model run; 1 turns batching off
    max_queue_delay_ms: float = 2.0  # longest wait of the oldest request for more rows
    max_queue: int = 256  # requests allowed to wait; the next one is refused (QueueFull)

    def __post_init__(self):
        check_at_least("max_batch_size", self.max_batch_size, 1, " (1 turns batching off)")
        check_at_least("max_queue_delay_ms", self.max_queue_delay_ms, 0)
        check_at_least("max_queue", self.max_queue, 1)


class QueueFull(Exception):
    """The queue holds `max_queue` requests already, or the batcher is shutting down."""


@dataclass(frozen=True)
class BatchReport:
    """What one model run did, for metrics."""

    rows: int
    requests: int
    queue_seconds: tuple[float, ...]  # per request: enqueue -> model run starts
    compute_seconds: float
    ok: bool


class _Waiting:
    __slots__ = ("rows", "future", "enqueued")

    def __init__(self, rows: np.ndarray, future: asyncio.Future, enqueued: float):
        self.rows, self.future, self.enqueued = rows, future, enqueued


class Batcher:
    """Merge concurrent `submit` calls into model runs of at most `max_batch_size` rows.

    run: a thread-safe function (N, ...) array -> (N, ...) array, e.g. `Runner.run`.
    on_batch: called on the event loop with a `BatchReport` after every model run.
    All rows of all requests must have the same shape after the first axis (validate
    requests before `submit`): a run that raises fails only the requests in that run.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        config: BatchConfig = BatchConfig(),
        on_batch: Optional[Callable[[BatchReport], None]] = None,
    ):
        self.config = config
        self._run = run
        self._on_batch = on_batch
        self._waiting: deque[_Waiting] = deque()
        self._waiting_rows = 0
        self._wakeup: Optional[asyncio.Future] = None
        self._idle = False
        self._closing = False
        self._task: Optional[asyncio.Task] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecnn-infer")
        self.abandoned = False  # stop() gave up on a model run still going in its thread

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch that is running)."""
        return len(self._waiting)

    def start(self) -> None:
        """Start the batcher task on the running event loop (done by the first `submit` too)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve(), name="edgecnn-batcher")

    async def stop(self, timeout: Optional[float] = None) -> None:
        """Refuse new requests, finish every request already queued, then stop.

        timeout: the most seconds to wait; then the rest fail with `QueueFull` and a model run
        still going is left to its thread (`abandoned` becomes True: the process should exit
        without joining it). None: wait for all.
        """
        self._closing = True
        self._wake(force=True)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                self.abandoned = True
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        self._executor.shutdown(wait=not self.abandoned, cancel_futures=True)

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Queue `rows` (N, ...) for the next model run; returns this request's (N, ...) result.

        Raises `QueueFull` when `max_queue` requests are waiting already or the batcher is
        stopping, and re-raises whatever the model run raised.
        """
        if self._closing:
            raise QueueFull("the server is shutting down")
        if len(self._waiting) >= self.config.max_queue:
            raise QueueFull(f"the queue is full ({self.config.max_queue} requests waiting)")
        if self._task is not None and self._task.done():  # it died of a bug: start a new one
            self._task = None
        if self._task is None:
            self.start()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(rows, future, time.perf_counter()))
        self._waiting_rows += len(rows)
        self._wake()
        return await future

    # -- the batcher task ------------------------------------------------------------
    def _wake(self, force: bool = False) -> None:
        waiter = self._wakeup
        if waiter is None or waiter.done():
            return
        if force or self._idle or self._waiting_rows >= self.config.max_batch_size:
            waiter.set_result(None)

    async def _sleep(self, timeout: Optional[float]) -> None:
        """Wait until `_wake` (or `timeout` seconds, if given)."""
        loop = asyncio.get_running_loop()
        waiter = self._wakeup = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _serve(self) -> None:
        try:
            while True:
                if not self._waiting:
                    if self._closing:
                        return
                    self._idle = True
                    try:
                        await self._sleep(None)
                    finally:
                        self._idle = False
                    continue
                await self._gather()
                taken = self._take()
                if taken:
                    await self._execute(taken)
        finally:  # cancelled: nobody will answer the rest
            for item in self._waiting:
                if not item.future.done():
                    item.future.set_exception(QueueFull("the server stopped before running this request"))
            self._waiting.clear()

    async def _gather(self) -> None:
        """Wait for more rows until the batch is full or the oldest request's delay is up."""
        delay = self.config.max_queue_delay_ms / 1000.0
        deadline = self._waiting[0].enqueued + delay
        while self._waiting_rows < self.config.max_batch_size and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            await self._sleep(remaining)

    def _take(self) -> list[_Waiting]:
        """Pop requests in order up to max_batch_size rows, cutting at request boundaries."""
        limit = self.config.max_batch_size
        taken: list[_Waiting] = []
        rows = 0
        while self._waiting:
            item = self._waiting[0]
            n = len(item.rows)
            if item.future.done():  # the caller went away
                self._waiting.popleft()
                self._waiting_rows -= n
                continue
            if taken and rows + n > limit:
                break
            self._waiting.popleft()
            self._waiting_rows -= n
            taken.append(item)
            rows += n
            if rows >= limit:
                break
        return taken

    async def _execute(self, taken: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        queue_seconds = tuple(started - item.enqueued for item in taken)
        batch = taken[0].rows
        try:
            if len(taken) > 1:
                batch = np.concatenate([item.rows for item in taken])
            result = await loop.run_in_executor(self._executor, self._run, batch)
            if len(result) != len(batch):
                raise RuntimeError(f"the model returned {len(result)} rows for a batch of {len(batch)}")
        except asyncio.CancelledError:
            for item in taken:
                if not item.future.done():
                    item.future.set_exception(QueueFull("the server stopped while running this request"))
            raise
        except Exception as exc:  # the model run failed: fail this batch, keep serving
            for item in taken:
                if not item.future.done():
                    item.future.set_exception(exc)
            self._report(BatchReport(len(batch), len(taken), queue_seconds, time.perf_counter() - started, False))
            return
        compute = time.perf_counter() - started
        offset = 0
        for item in taken:
            n = len(item.rows)
            if not item.future.done():
                item.future.set_result(result[offset : offset + n])
            offset += n
        self._report(BatchReport(len(batch), len(taken), queue_seconds, compute, True))

    def _report(self, report: BatchReport) -> None:
        """Tell the metrics; a failing callback must never stop the batcher."""
        if self._on_batch is not None:
            try:
                self._on_batch(report)
            except Exception:  # pragma: no cover - a bug in the callback, logged, not fatal
                import logging

                logging.getLogger("edgecnn.serve").exception("batch report callback failed")


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
