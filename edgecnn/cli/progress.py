"""The progress bar of long commands (predict, tune), on stderr.

On a terminal rich draws it in place (bar, done/total, rate, elapsed, time left); in a log or a pipe
it is one plain line per tenth of the work, so logs stay short. Started once the number of items
is known; `wanted=None` decides then: on for 1,000 items or more, or when stderr is a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from edgecnn.tables import is_terminal, printable


class ProgressBar:
    """Progress of `total` items; `update(done, total)` as the work goes, `close()` at the end."""

    LARGE = 1000

    def __init__(self, wanted: Optional[bool], label: str = "predict", stream: TextIO | None = None):
        self.wanted, self.label = wanted, printable(label)
        self.stream = stream or sys.stderr
        self._bar = None

    def update(self, done: int, total: int) -> None:
        if self.wanted is None:
            self.wanted = total >= self.LARGE or is_terminal(self.stream)
        if not self.wanted:
            return
        if self._bar is None:
            self._bar = (_RichBar if is_terminal(self.stream) else _LogLines)(self.label, total, self.stream)
        self._bar.update(done)

    def step(self, done: int, total: int, *_what) -> None:
        """`update` as a library progress callback, which may also say what it is doing (ignored)."""
        self.update(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class _RichBar:
    def __init__(self, label: str, total: int, stream: TextIO):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}", markup=False),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self.started = time.perf_counter()
        self.task = self.progress.add_task(label, total=max(total, 0) or None, rate="")
        self.progress.start()

    def update(self, done: int) -> None:
        elapsed = time.perf_counter() - self.started
        rate = f"{done / elapsed:.1f}/s" if elapsed > 0 else ""
        self.progress.update(self.task, completed=done, rate=rate)

    def close(self) -> None:
        self.progress.stop()


class _LogLines:
    """One line per tenth of the work: 'predict 500/1000  50%  45.5/s  11 s, 11 s left'."""

    def __init__(self, label: str, total: int, stream: TextIO):
        self.label, self.total, self.stream = label, max(total, 0), stream
        self.started, self.done, self._tenth = time.perf_counter(), 0, -1

    def update(self, done: int) -> None:
        self.done = min(max(done, 0), self.total) if self.total else max(done, 0)
        tenth = int(10 * self.done / self.total) if self.total else 10
        if tenth > self._tenth:
            self._tenth = tenth
            self.stream.write(self.line(time.perf_counter()) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if not self.total:
            return f"{self.label} {self.done}  {rate:.1f}/s  {elapsed:.0f} s"
        left = self.total - self.done
        eta = f", {left / rate:.0f} s left" if left and rate > 0 else ""
        return (
            f"{self.label} {self.done}/{self.total} {self.done / self.total:4.0%}  {rate:.1f}/s  {elapsed:.0f} s{eta}"
        )

    def close(self) -> None:
        pass
