"""What people read in a terminal: tables drawn by rich whose cells cannot drive the terminal, and
a progress bar that redraws cleanly on a terminal and stays short in logs."""

from __future__ import annotations

import io

import pytest

from edgecnn.cli.progress import ProgressBar
from edgecnn.tables import Table, printable


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_table_aligns_text_left_and_numbers_right_under_its_title():
    table = Table(title="results")
    table.add_column("image")
    table.add_column("score", right=True)
    table.add_row("a.png", "0.5")
    table.add_row("longer-name.png", "12.25")
    lines = table.render().splitlines()
    assert lines[0] == "results"
    assert lines[1].split() == ["image", "score"] and set(lines[2]) == {"-"}  # ASCII: logs and pipes of any encoding
    assert lines[3].startswith("a.png ") and lines[3].endswith(" 0.5")
    assert lines[4].startswith("longer-name.png ") and lines[4].endswith("12.25")
    assert len(lines[3]) == len(lines[4])  # the numbers column is right-aligned


def test_a_cell_with_escape_sequences_newlines_or_markup_is_shown_as_written_on_one_line():
    table = Table()
    table.add_column("image")
    table.add_row("a\x1b[31mred\nb.png")
    table.add_row("[bold red]c.png")
    lines = table.render().splitlines()
    assert lines[-2] == "a\\x1b[31mred\\nb.png" and lines[-1] == "[bold red]c.png"
    assert "\x1b" not in table.render() and len(lines) == 4
    assert printable("ünïcode ok") == "ünïcode ok"


def test_a_table_off_a_terminal_keeps_whole_rows_however_wide():
    table = Table(title="wide")
    table.add_column("path")
    table.add_row("x" * 300)
    out = io.StringIO()
    table.print(out)
    assert "x" * 300 in out.getvalue().splitlines()


def test_a_row_of_the_wrong_length_is_a_bug_caught_at_once():
    table = Table()
    table.add_column("a")
    with pytest.raises(ValueError, match="a row of 2 cells in a table of 1 columns"):
        table.add_row("x", "y")


def test_off_a_terminal_the_progress_bar_writes_one_line_per_tenth_of_the_work():
    out = io.StringIO()
    bar = ProgressBar(True, "predict", stream=out)
    for done in range(0, 1001, 7):
        bar.update(done, 1000)
    bar.update(1000, 1000)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # 0%, 10%, ... 100%
    assert lines[-1].startswith("predict 1000/1000 100%")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_on_a_terminal_the_progress_bar_erases_the_line_before_each_redraw_and_ends_it():
    out = Terminal()
    bar = ProgressBar(True, "tune", stream=out)
    for done in range(1, 5):
        bar.update(done, 4)
    bar.close()
    text = out.getvalue()
    redraws = text.split("\r")[1:]
    assert redraws and all(r.startswith("\x1b[2K") for r in redraws)  # no text left over from a longer line
    assert "4/4" in redraws[-1] and "100%" in redraws[-1] and text.rstrip("\x1b[?25h").endswith("\n")


@pytest.mark.parametrize("total, wanted", [(999, False), (1000, True)])
def test_off_a_terminal_the_progress_bar_shows_itself_for_large_jobs_unless_told(total, wanted):
    out = io.StringIO()
    bar = ProgressBar(None, "predict", stream=out)
    bar.update(total, total)
    bar.close()
    assert bool(out.getvalue()) is wanted
    told = io.StringIO()
    bar = ProgressBar(False, "predict", stream=told)
    bar.update(total, total)
    assert told.getvalue() == ""
