"""How ``buildq deploy`` shows a deployment while it runs, and how it ends.

- On a terminal (:class:`LiveProgress`): one line redrawn in place by rich's Live, a
  spinner with the current phase and the time since the deploy was submitted
  (``⠋ building · 12.3s``); each finished phase (with its duration) and each build
  log line scroll above it; the live URL at the end.
- Elsewhere, pipes and CI (:class:`PlainProgress`): one line per phase change with
  the elapsed time (``==> building (12.3s)``), the log lines indented by four
  spaces, then ``live: URL``.
- ``--json`` (:class:`JsonProgress`): nothing while it runs, then the final record.

Every view ends with :func:`outcome`: exit code 0 when the job went live (or was
superseded by a newer deployment of its service), 1 with the status and error on
stderr otherwise. Log lines come from builds (other people's output): their terminal
escape sequences (the colours build tools print, ``CI=true`` turns many on) are
dropped, and any other control character is replaced, before they reach the terminal.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import click
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from shared.cli.render import cell, print_json

Clock = Callable[[], float]
SUCCESS = frozenset({"live", "superseded"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a deploy ends with: the exit code and the closing message."""

    code: int
    message: str

    @property
    def failed(self) -> bool:
        return self.code != 0


def outcome(record: Mapping[str, Any]) -> Outcome:
    """The exit code and closing line for a job's final record."""
    status = record.get("status")
    if status == "live":
        if record.get("served_by"):  # its commit was live already: nothing was built
            return Outcome(0, f"live: {record.get('url')} (served by {record['served_by']})")
        return Outcome(0, f"live: {record.get('url')}")
    if status == "superseded":
        if record.get("superseded_by"):  # stale when taken: never built, so no preview
            return Outcome(0, f"superseded by {record['superseded_by']} before building")
        return Outcome(0, f"superseded by a newer deployment; preview: {record.get('url')}")
    return Outcome(1, f"{status}: {record.get('error') or 'no error recorded'}")


# ECMA-48 escape sequences: CSI (colours, cursor moves), OSC (window titles, links)
# ended by BEL or ST, and the two-character ones. What is left of a malformed one is
# replaced as a control character by ``cell``.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")


def log_text(text: object) -> str:
    """A build's log line, safe to print: escape sequences dropped, no control
    characters, tabs as spaces."""
    plain = "" if text is None else ANSI_ESCAPE.sub("", str(text))
    return cell(plain) if plain else ""


def elapsed(seconds: float) -> str:
    """Seconds as the views print them: ``12.3s``."""
    return f"{max(0.0, seconds):.1f}s"


class Progress(Protocol):
    """A view of one deploy: a context manager fed phases and log lines, then the end."""

    def __enter__(self) -> Progress: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def phase(self, status: str) -> None: ...

    def line(self, text: str) -> None: ...

    def finish(self, record: Mapping[str, Any]) -> int: ...


class _Timed:
    """Elapsed time since the view was made (the deploy's submission)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.started_s = clock()

    def since_start_s(self) -> float:
        return self.clock() - self.started_s

    def __enter__(self) -> _Timed:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class PlainProgress(_Timed):
    """One line per phase change and per log line, for pipes and CI."""

    def __init__(self, clock: Clock = time.monotonic, *, show_lines: bool = True) -> None:
        super().__init__(clock)
        self.show_lines = show_lines

    def __enter__(self) -> PlainProgress:
        return self

    def phase(self, status: str) -> None:
        click.echo(f"==> {log_text(status)} ({elapsed(self.since_start_s())})")

    def line(self, text: str) -> None:
        if self.show_lines:
            click.echo(f"    {log_text(text)}")

    def finish(self, record: Mapping[str, Any]) -> int:
        end = outcome(record)
        click.echo(end.message, err=end.failed)
        return end.code


class JsonProgress(_Timed):
    """Silent while the job runs; the final record as JSON at the end (``--json``)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)

    def __enter__(self) -> JsonProgress:
        return self

    def phase(self, status: str) -> None:
        return None

    def line(self, text: str) -> None:
        return None

    def finish(self, record: Mapping[str, Any]) -> int:
        print_json(dict(record))
        end = outcome(record)
        if end.failed:
            click.echo(end.message, err=True)
        return end.code


class LiveProgress(_Timed):
    """A spinner line with the phase and elapsed time, redrawn in place; finished
    phases and log lines print above it."""

    def __init__(
        self,
        console: Console,
        clock: Clock = time.monotonic,
        *,
        errors: Console | None = None,
        show_lines: bool = True,
    ) -> None:
        super().__init__(clock)
        self.console = console
        self.errors = errors or Console(stderr=True, highlight=False)
        self.show_lines = show_lines
        self.current = "submitted"
        self.current_since_s = 0.0
        self.spinner = Spinner("dots", style="cyan")
        # transient: the spinner line is wiped when the deploy ends, leaving the log.
        self.live = Live(
            self, console=console, refresh_per_second=10, transient=True, auto_refresh=True
        )

    def __rich__(self) -> Spinner:
        """The live line, recomputed on every refresh so the clock keeps moving."""
        self.spinner.update(
            text=Text.assemble((self.current, "bold"), " · ", elapsed(self.since_start_s()))
        )
        return self.spinner

    def __enter__(self) -> LiveProgress:
        self.live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.live.stop()

    def _close_phase(self) -> None:
        took = self.since_start_s() - self.current_since_s
        mark = Text.assemble(("✓ ", "green"), (f"{self.current:<11}", "bold"), elapsed(took))
        self.console.print(mark)

    def phase(self, status: str) -> None:
        if self.current != "submitted":
            self._close_phase()
        self.current = log_text(status)
        self.current_since_s = self.since_start_s()
        self.live.refresh()

    def line(self, text: str) -> None:
        if self.show_lines:
            self.console.print(Text("  " + log_text(text), style="dim"), soft_wrap=True)

    def finish(self, record: Mapping[str, Any]) -> int:
        self.live.stop()
        end = outcome(record)
        total = f" ({elapsed(self.since_start_s())})"
        if end.failed:
            self.errors.print(Text(end.message + total, style="bold red"))
        else:
            self.console.print(Text(end.message + total, style="bold green"))
        return end.code


RECHECK_PHASES = frozenset({"queued", "building"})


def follow(entries: Iterable[Mapping[str, Any]], view: Progress) -> None:
    """Feed a job's log entries (``Client.follow``) to ``view`` until they end.

    A ``waiting`` job looks at its lock again now and then: ``queued``, ``building``,
    and ``waiting`` again while the lock is still held. Those rounds are held back:
    after ``waiting``, the phases of a round are shown only once the job gets further
    (a log line, another phase, its end); ``waiting`` again drops them."""
    held: list[str] = []  # phases of a round that may end in ``waiting`` again
    waiting = False
    for entry in entries:
        kind = entry.get("kind")
        if kind in ("phase", "end"):
            status = str(entry.get("status"))
            if waiting and kind == "phase" and status in RECHECK_PHASES:
                held.append(status)
                continue
            if waiting and kind == "phase" and status == "waiting":
                held.clear()
                continue
            _show(held, view)
            waiting = kind == "phase" and status == "waiting"
            view.phase(status)
        elif kind == "line":
            _show(held, view)
            waiting = False
            view.line(str(entry.get("text") or ""))


def _show(held: list[str], view: Progress) -> None:
    """The held-back phases of a round that got further than a recheck."""
    for status in held:
        view.phase(status)
    held.clear()
