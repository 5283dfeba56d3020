"""How the CLI prints: rich tables on a terminal, plain tab-separated rows otherwise.

Plain output is for scripts and pipes: one row per line, fields separated by a tab,
no header, no colour, no box drawing and nothing cut short; a missing value is ``-``.
A command that prints several tables starts each plain row with the table's ``kind``.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

MISSING = "-"
REPLACEMENT = "\ufffd"
# Whitespace controls become a space so that a row stays on one line and its fields
# stay tab-separated; other control characters (ESC above all: values come from other
# people, a lock reason could carry terminal escapes) become U+FFFD.
_BLANKS = str.maketrans(dict.fromkeys("\t\n\r\v\f", " "))


def cell(value: Any) -> str:
    """One value as table text: ``-`` when missing, ``yes``/``no``, no control characters."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value).translate(_BLANKS)
    return "".join(REPLACEMENT if unicodedata.category(ch) == "Cc" else ch for ch in text)


@dataclass(frozen=True, slots=True)
class Listing:
    """Rows under named columns, as one command shows them."""

    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]
    title: str | None = None  # above the table on a terminal
    kind: str | None = None  # first field of each plain row, when a command prints several
    empty: str | None = None  # said (to stderr when plain) when there are no rows

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row!r} does not match columns {self.columns!r}")

    def plain_lines(self) -> list[str]:
        """The rows as tab-separated lines."""
        prefix = (self.kind,) if self.kind else ()
        return ["\t".join(cell(v) for v in (*prefix, *row)) for row in self.rows]

    def table(self) -> Table:
        """The rows as a rich table (without the title)."""
        table = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            header_style="bold",
        )
        for name in self.columns:
            table.add_column(name, overflow="fold")
        for row in self.rows:
            # Text, not str: a value is never read as rich markup.
            table.add_row(*(Text(cell(v)) for v in row))
        return table


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (not a pipe, a file or a test's capture)."""
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Output:
    """Where a command prints: a rich console on a terminal, plain lines otherwise."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self._printed = False  # a titled table after other output gets a blank line

    @classmethod
    def for_stdout(cls) -> Output:
        """Rich when stdout is a terminal (colour follows ``NO_COLOR``), plain otherwise."""
        return cls(Console(highlight=False) if stdout_is_terminal() else None)

    def line(self, text: str) -> None:
        """One line of text, as is in both modes."""
        if self.console is None:
            click.echo(text)
        else:
            self.console.print(Text(text))
            self._printed = True

    def listing(self, listing: Listing) -> None:
        """A table; when it has no rows, its ``empty`` message (stderr when plain)."""
        if not listing.rows:
            if listing.empty is not None:
                if self.console is None:
                    click.echo(listing.empty, err=True)
                else:
                    self.console.print(Text(listing.empty))
            return
        if self.console is None:
            for line in listing.plain_lines():
                click.echo(line)
        else:
            if listing.title:
                # Its own line, not the table's title: that one wraps to the table's width.
                if self._printed:
                    self.console.print()
                self.console.print(Text(listing.title, style="bold"))
            self.console.print(listing.table())
            self._printed = True


def print_json(value: Any) -> None:
    """The API's JSON answer, for scripts (``--json``)."""
    click.echo(json.dumps(value, indent=2))
