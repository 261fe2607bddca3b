"""What people read in a terminal: aligned plain-text tables, cells that cannot drive the terminal,
and a progress bar that stays short in logs."""

from __future__ import annotations

import io

import pytest

from edgecnn.terminal import ProgressBar, Table, printable


def test_a_table_aligns_text_left_and_numbers_right_under_its_title():
    table = Table(title="results")
    table.add_column("image")
    table.add_column("score", right=True)
    table.add_row("a.png", "0.5")
    table.add_row("longer-name.png", "12.25")
    assert table.render().splitlines() == [
        "results",
        "image            score",
        "---------------  -----",
        "a.png              0.5",
        "longer-name.png  12.25",
    ]


def test_a_cell_with_escape_sequences_or_newlines_is_shown_escaped_on_one_line():
    table = Table()
    table.add_column("image")
    table.add_row("a\x1b[31mred\nb.png")
    lines = table.render().splitlines()
    assert lines[-1] == "a\\x1b[31mred\\nb.png"
    assert "\x1b" not in table.render() and len(lines) == 3
    assert printable("ünïcode ok") == "ünïcode ok"


def test_a_row_of_the_wrong_length_is_a_bug_caught_at_once():
    table = Table()
    table.add_column("a")
    with pytest.raises(ValueError, match="a row of 2 cells in a table of 1 columns"):
        table.add_row("x", "y")


def test_off_a_terminal_the_progress_bar_writes_one_line_per_tenth_of_the_work():
    out = io.StringIO()
    bar = ProgressBar("predict", 1000, stream=out)
    for done in range(0, 1001, 7):
        bar.update(done)
    bar.update(1000)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # 0%, 10%, ... 100%
    assert lines[-1].startswith("predict [" + "#" * 30 + "] 1000/1000 100%")
    assert "\r" not in out.getvalue()


def test_on_a_terminal_the_progress_bar_redraws_one_line_and_ends_it():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = ProgressBar("tune", 4, stream=out)
    for done in range(1, 5):
        bar.update(done)
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.startswith("\rtune [")
    assert "4/4 100%" in text.splitlines()[-1].split("\r")[-1]
