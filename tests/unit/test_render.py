"""shared/cli/render.py: rich tables on a terminal, plain tab-separated rows otherwise."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from shared.cli.render import Listing, Output, cell


def _terminal(width: int = 100) -> tuple[Output, io.StringIO]:
    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=True, color_system=None, width=width, highlight=False
    )
    return Output(console), buffer


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        ("", "-"),
        (True, "yes"),
        (False, "no"),
        (0, "0"),
        (1234, "1234"),
        ("a\tb\nc\rd", "a b c d"),
        ("red \x1b[31mtext\x07", "red \ufffd[31mtext\ufffd"),
        ("naïve ☃", "naïve ☃"),
    ],
)
def test_cell_makes_one_safe_line_of_any_value(value: object, text: str) -> None:
    assert cell(value) == text


def test_plain_lines_are_tab_separated_and_start_with_the_kind_when_given() -> None:
    listing = Listing(("worker", "busy"), [("w1", "1/2"), ("w2", None)], kind="worker")
    assert listing.plain_lines() == ["worker\tw1\t1/2", "worker\tw2\t-"]
    assert Listing(("a", "b"), [("x", "y z")]).plain_lines() == ["x\ty z"]


def test_a_row_that_does_not_match_the_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match columns"):
        Listing(("a", "b"), [("only one",)])


def test_plain_output_is_rows_only_and_never_cut_short(capsys: pytest.CaptureFixture[str]) -> None:
    long_value = "x" * 500
    Output(None).listing(Listing(("id", "value"), [("1", long_value)]))
    out = capsys.readouterr().out
    assert out == f"1\t{long_value}\n"


def test_plain_empty_listing_says_so_on_stderr_and_prints_no_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Output(None).listing(Listing(("service",), [], empty="no locks held"))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "no locks held\n"


def test_terminal_output_is_a_table_with_a_header_and_title() -> None:
    out, buffer = _terminal()
    out.listing(Listing(("service", "owner"), [("web", "carol")], title="locks"))
    text = buffer.getvalue()
    assert "locks" in text
    assert "service" in text
    assert "carol" in text
    assert "─" in text  # the header rule: box drawing on a terminal only
    assert "\t" not in text


def test_terminal_output_never_reads_values_as_markup_or_passes_escapes() -> None:
    out, buffer = _terminal()
    out.listing(Listing(("reason",), [("[bold]mine[/bold] \x1b]0;pwned\x07",)]))
    text = buffer.getvalue()
    assert "[bold]mine[/bold]" in text
    assert "\x1b]0;" not in text
    assert "\x07" not in text


def test_terminal_output_folds_long_values_instead_of_cutting_them() -> None:
    out, buffer = _terminal(width=40)
    job_id = "0123456789abcdef0123456789abcdef0123456789abcdef"
    out.listing(Listing(("job",), [(job_id,)]))
    folded = "".join(line.strip() for line in buffer.getvalue().splitlines())
    assert job_id in folded
    assert "…" not in buffer.getvalue()


def test_terminal_empty_listing_says_so_on_stdout() -> None:
    out, buffer = _terminal()
    out.listing(Listing(("env",), [], empty="no environment is claimed"))
    assert "no environment is claimed" in buffer.getvalue()


def test_terminal_titled_tables_after_other_output_start_after_a_blank_line() -> None:
    out, buffer = _terminal(width=30)
    out.line("queue 2")  # and a title wider than its table is not wrapped
    out.listing(Listing(("job",), [("a",)], title="pending"))
    out.listing(Listing(("worker",), [("w",)], title="workers"))
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    assert lines[:3] == ["queue 2", "", "pending"]
    assert lines[lines.index("workers") - 1] == ""
