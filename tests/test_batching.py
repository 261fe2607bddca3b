"""The dynamic batcher: merging, cutting at request boundaries, delays, a full queue, failures, draining."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from edgecnn.serve.batching import BatchConfig, Batcher, QueueFull
from edgecnn.errors import SettingError


class Recorder:
    """A model run that records batch sizes and returns each row's own id (column 0) and size."""

    def __init__(self, fail_first: int = 0, gate: threading.Event | None = None):
        self.sizes: list[int] = []
        self.fail_first = fail_first
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        self.sizes.append(len(batch))
        if len(self.sizes) <= self.fail_first:
            raise RuntimeError("boom in the model")
        return np.stack([batch[:, 0] * 2.0, np.full(len(batch), float(len(batch)))], axis=1)


def rows(ids) -> np.ndarray:
    return np.array([[i, 0] for i in ids], dtype=np.float32)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_each_caller_gets_exactly_its_own_rows_from_one_merged_batch():
    model = Recorder()
    reports = []

    async def main():
        batcher = Batcher(model, BatchConfig(max_batch_size=16, max_queue_delay_ms=50), on_batch=reports.append)
        requests = [rows([1]), rows([2, 3, 4]), rows([5, 6]), rows([7])]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return requests, results

    requests, results = run(main())
    assert model.sizes == [7]
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result[:, 0], request[:, 0] * 2)
        assert result.shape == (len(request), 2)
    assert [(r.rows, r.requests, r.ok) for r in reports] == [(7, 4, True)]
    assert len(reports[0].queue_seconds) == 4


def test_batches_are_cut_at_request_boundaries_never_splitting_a_request():
    model = Recorder()

    async def main():
        batcher = Batcher(model, BatchConfig(max_batch_size=4, max_queue_delay_ms=20))
        requests = [rows([1]), rows([2, 3]), rows([4]), rows([5, 6, 7]), rows([8, 9])]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return requests, results

    requests, results = run(main())
    assert model.sizes == [4, 3, 2]  # [1,2+3,4] | [5,6,7] (+[8,9] would overflow) | [8,9]
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result[:, 0], request[:, 0] * 2)


def test_a_request_larger_than_max_batch_size_runs_alone():
    model = Recorder()

    async def main():
        batcher = Batcher(model, BatchConfig(max_batch_size=4, max_queue_delay_ms=20))
        big, small = rows(range(10, 16)), rows([1])
        out_big, out_small = await asyncio.gather(batcher.submit(big), batcher.submit(small))
        await batcher.stop()
        return big, out_big, out_small

    big, out_big, out_small = run(main())
    assert model.sizes == [6, 1]
    np.testing.assert_array_equal(out_big[:, 0], big[:, 0] * 2)
    assert out_small.tolist() == [[2.0, 1.0]]


def test_max_batch_size_one_turns_batching_off():
    model = Recorder()

    async def main():
        batcher = Batcher(model, BatchConfig(max_batch_size=1, max_queue_delay_ms=50))
        results = await asyncio.gather(*(batcher.submit(rows([i])) for i in range(5)))
        await batcher.stop()
        return results

    results = run(main())
    assert model.sizes == [1, 1, 1, 1, 1]
    assert [r[0, 0] for r in results] == [0, 2, 4, 6, 8]


def test_the_queue_delay_waits_for_later_requests_and_zero_delay_does_not():
    async def staggered(delay_ms):
        model = Recorder()
        batcher = Batcher(model, BatchConfig(max_batch_size=8, max_queue_delay_ms=delay_ms))
        first = asyncio.ensure_future(batcher.submit(rows([1])))
        await asyncio.sleep(0.03)
        second = await batcher.submit(rows([2]))
        assert (await first)[0, 0] == 2 and second[0, 0] == 4
        await batcher.stop()
        return model.sizes

    assert run(staggered(500)) == [2]
    assert run(staggered(0)) == [1, 1]


def test_a_full_queue_refuses_new_requests_and_serves_the_queued_ones():
    gate = threading.Event()
    model = Recorder(gate=gate)

    async def main():
        batcher = Batcher(model, BatchConfig(max_batch_size=1, max_queue_delay_ms=0, max_queue=2))
        running = asyncio.ensure_future(batcher.submit(rows([1])))
        while not model.entered.is_set():  # the batcher has taken it into the (blocked) model
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.submit(rows([i]))) for i in (2, 3)]
        await asyncio.sleep(0.01)
        assert batcher.depth == 2
        with pytest.raises(QueueFull, match="queue is full"):
            await batcher.submit(rows([4]))
        gate.set()
        results = [await running] + [await q for q in queued]
        await batcher.stop()
        return results

    results = run(main())
    assert [r[0, 0] for r in results] == [2, 4, 6]
    assert model.sizes == [1, 1, 1]


def test_a_failing_model_run_fails_only_the_requests_in_that_batch():
    model = Recorder(fail_first=1)
    reports = []

    async def main():
        batcher = Batcher(model, BatchConfig(max_batch_size=8, max_queue_delay_ms=20), on_batch=reports.append)
        failed = await asyncio.gather(batcher.submit(rows([1])), batcher.submit(rows([2])), return_exceptions=True)
        later = await batcher.submit(rows([3]))
        await batcher.stop()
        return failed, later

    failed, later = run(main())
    assert [str(e) for e in failed] == ["boom in the model", "boom in the model"]
    assert later[0, 0] == 6
    assert [(r.rows, r.ok) for r in reports] == [(2, False), (1, True)]


def test_requests_whose_rows_cannot_merge_fail_together_and_the_batcher_keeps_serving():
    async def main():
        batcher = Batcher(Recorder(), BatchConfig(max_batch_size=8, max_queue_delay_ms=20))
        mismatched = await asyncio.gather(
            batcher.submit(rows([1])), batcher.submit(np.zeros((1, 5), np.float32)), return_exceptions=True
        )
        later = await batcher.submit(rows([4]))
        await batcher.stop()
        return mismatched, later

    mismatched, later = run(main())
    assert all(isinstance(e, ValueError) for e in mismatched)
    assert later[0, 0] == 8


def test_a_failing_metrics_callback_never_stops_the_batcher():
    def broken_metrics(report):
        raise RuntimeError("bug in the metrics")

    async def main():
        batcher = Batcher(Recorder(), BatchConfig(max_batch_size=4, max_queue_delay_ms=1), on_batch=broken_metrics)
        first = await batcher.submit(rows([1]))
        second = await batcher.submit(rows([2]))
        await batcher.stop()
        return first, second

    first, second = run(main())
    assert (first[0, 0], second[0, 0]) == (2, 4)


def test_stop_finishes_every_queued_request_then_refuses_new_ones():
    gate = threading.Event()
    model = Recorder(gate=gate)

    async def main():
        batcher = Batcher(model, BatchConfig(max_batch_size=2, max_queue_delay_ms=0))
        pending = [asyncio.ensure_future(batcher.submit(rows([i]))) for i in range(5)]
        await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="shutting down"):
            await batcher.submit(rows([9]))
        gate.set()
        await stopping
        return [await p for p in pending]

    results = run(main())
    assert [r[0, 0] for r in results] == [0, 2, 4, 6, 8]
    assert sum(model.sizes) == 5 and max(model.sizes) <= 2


def test_stop_with_a_timeout_gives_up_on_a_stuck_model_run_and_fails_the_rest():
    gate = threading.Event()
    model = Recorder(gate=gate)

    async def main():
        batcher = Batcher(model, BatchConfig(max_batch_size=1, max_queue_delay_ms=0))
        running = asyncio.ensure_future(batcher.submit(rows([1])))
        queued = asyncio.ensure_future(batcher.submit(rows([2])))
        while not model.entered.is_set():
            await asyncio.sleep(0.005)
        started = asyncio.get_running_loop().time()
        await batcher.stop(timeout=0.2)
        took = asyncio.get_running_loop().time() - started
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        return took, outcomes, batcher.abandoned

    try:
        took, outcomes, abandoned = run(main())
    finally:
        gate.set()
    assert 0.19 < took < 1.0 and abandoned
    assert all(isinstance(o, QueueFull) for o in outcomes), outcomes
    assert "stopped" in str(outcomes[0]) and "stopped" in str(outcomes[1])


def test_bad_batch_settings_name_the_setting():
    with pytest.raises(SettingError, match=r"^max_batch_size 0: expected 1 or more \(1 turns batching off\)"):
        BatchConfig(max_batch_size=0)
    with pytest.raises(SettingError, match="^max_queue 0: expected 1 or more"):
        BatchConfig(max_queue=0)
    with pytest.raises(SettingError, match="^max_queue_delay_ms -1: expected 0 or more"):
        BatchConfig(max_queue_delay_ms=-1)
