"""Goals as every benchmark prints them, one machine-readable line each:

    GOAL <name> <met|missed> <value> <target>

``target`` is ``<=N`` or ``>=N``. ``python -m tests.bench`` collects these lines from
every benchmark and ends with ``goals met: N of M``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GOAL_LINE = re.compile(r"^GOAL (\S+) (met|missed) (\S+) ((?:<=|>=)\S+)$")


@dataclass(frozen=True)
class Goal:
    """A measured value against its target (``at_most``: lower is better)."""

    name: str
    value: float
    target: float
    at_most: bool = True

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.at_most else self.value >= self.target

    @property
    def target_text(self) -> str:
        return f"{'<=' if self.at_most else '>='}{self.target:g}"

    def line(self) -> str:
        verdict = "met" if self.met else "missed"
        return f"GOAL {self.name} {verdict} {self.value:.4g} {self.target_text}"


@dataclass(frozen=True)
class GoalResult:
    """A GOAL line read back from a benchmark's output."""

    name: str
    met: bool
    value: str
    target: str


def parse_goal(line: str) -> GoalResult | None:
    """The goal a ``GOAL`` line states, or None for any other line."""
    match = GOAL_LINE.match(line.strip())
    if match is None:
        return None
    name, verdict, value, target = match.groups()
    return GoalResult(name, verdict == "met", value, target)


def summary(goals: list[Goal] | list[GoalResult]) -> str:
    return f"goals met: {sum(g.met for g in goals)} of {len(goals)}"
