"""What the commands print for people: plain-text tables and a progress bar on stderr.

Standard library only (the device install carries no rich, pygments or markdown parser). Every
cell is made printable first, so a file name cannot move the cursor, colour the terminal or
break a row (escape sequences and newlines are shown escaped).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def printable(value: object) -> str:
    """`value` as one line of printable text: control characters shown as Python escapes."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Table:
    """A titled table of text cells, columns aligned left or right, rendered as plain text."""

    title: str = ""
    columns: list[str] = field(default_factory=list)
    right: set[int] = field(default_factory=set)  # indexes of right-aligned columns (numbers)
    rows: list[list[str]] = field(default_factory=list)

    def add_column(self, name: str, *, right: bool = False) -> None:
        if right:
            self.right.add(len(self.columns))
        self.columns.append(name)

    def add_row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(self.columns)} columns")
        self.rows.append([printable(c) for c in cells])

    def render(self) -> str:
        """The table as lines of text: the title, the header, a rule, the rows."""
        widths = [len(name) for name in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

        def line(cells) -> str:
            padded = (c.rjust(w) if i in self.right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            return "  ".join(padded).rstrip()

        out = [printable(self.title)] if self.title else []
        out += [line(self.columns), "  ".join("-" * w for w in widths)]
        out += [line(row) for row in self.rows]
        return "\n".join(out)

    def print(self, out: TextIO | None = None) -> None:
        print(self.render(), file=out or sys.stdout, flush=True)


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal (False for files, pipes and closed or replaced streams)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """Progress of `total` items on stderr, redrawn in place on a terminal (at most 10 times a
    second), else one line per tenth of the work, so that logs stay short."""

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: TextIO | None = None):
        self.label, self.total = label, max(total, 0)
        self.stream = stream or sys.stderr
        self.tty = is_terminal(self.stream)
        self.started = time.perf_counter()
        self.done, self._drawn_at, self._tenth = 0, 0.0, -1

    def update(self, done: int) -> None:
        self.done = min(max(done, 0), self.total) if self.total else done
        now = time.perf_counter()
        if self.tty:
            if now - self._drawn_at >= 0.1 or self.done == self.total:
                self._drawn_at = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
            return
        tenth = int(10 * self.done / self.total) if self.total else 10
        if tenth > self._tenth:
            self._tenth = tenth
            self.stream.write(self._line(now) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + self._line(time.perf_counter()) + "\n")
            self.stream.flush()

    def _line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if not self.total:
            return f"{self.label} {self.done}  {rate:.1f}/s  {elapsed:.0f} s"
        share = self.done / self.total
        filled = round(self.WIDTH * share)
        eta = (self.total - self.done) / rate if rate > 0 else None
        left = "" if eta is None or self.done == self.total else f"  {eta:.0f} s left"
        return (
            f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} "
            f"{share:4.0%}  {rate:.1f}/s  {elapsed:.0f} s{left}"
        )
