"""Tables for people, drawn by rich: predict's results, profile's measurements, tune's candidates.

Every cell and title is made printable first and handed to rich as plain text (never markup), so a
file name cannot move the cursor, colour the terminal, break a row or style the table: escape
sequences and newlines are shown escaped, and "[red]" stays "[red]". Off a terminal a table is as
wide as its cells (no wrapping at 80 columns), so logs and pipes keep whole rows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from io import StringIO
from typing import TextIO


def printable(value: object) -> str:
    """`value` as one line of printable text: control characters shown as Python escapes."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal (False for files, pipes and closed or replaced streams)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class Table:
    """A titled table of text cells, columns aligned left or right (numbers), printed by rich."""

    title: str = ""
    columns: list[str] = field(default_factory=list)
    right: set[int] = field(default_factory=set)  # indexes of right-aligned columns
    rows: list[list[str]] = field(default_factory=list)

    def add_column(self, name: str, *, right: bool = False) -> None:
        if right:
            self.right.add(len(self.columns))
        self.columns.append(name)

    def add_row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(self.columns)} columns")
        self.rows.append([printable(c) for c in cells])

    def _rich(self, unicode: bool = True):
        from rich import box
        from rich.table import Table as RichTable

        from rich.text import Text

        # SIMPLE_HEAD's shape; in plain text a rule of '-' under the header, which any encoding can write
        ruled = box.SIMPLE_HEAD if unicode else box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)

        table = RichTable(
            title=Text(printable(self.title)) if self.title else None,
            title_justify="left",
            title_style="bold",
            box=ruled,
            show_edge=False,
            pad_edge=False,
            padding=(0, 1),
        )
        for i, name in enumerate(self.columns):
            table.add_column(Text(name), justify="right" if i in self.right else "left")
        for row in self.rows:
            table.add_row(*(Text(cell) for cell in row))
        return table

    def render(self) -> str:
        """The table as plain ASCII-ruled text: the title, the header, a rule of '-', the rows (no colour); what
        logs, pipes and files get, whatever their encoding."""
        from rich.console import Console

        out = StringIO()
        Console(file=out, width=100_000, color_system=None).print(self._rich(unicode=False), crop=False)
        return "\n".join(line.rstrip() for line in out.getvalue().splitlines())

    def print(self, out: TextIO | None = None) -> None:
        """Print to `out` (stdout): drawn by rich to a terminal's width there, else as plain text lines."""
        out = out or sys.stdout
        if is_terminal(out):
            from rich.console import Console

            Console(file=out).print(self._rich())
        else:
            out.write(self.render() + "\n")
            out.flush()
