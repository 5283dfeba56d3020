"""The transfer table: a real tree deployed through ``buildq up`` (first deploy,
unchanged redeploy, one file changed), against the seed's and the AWS CLI's transfers
on the same moto server, in alternating rounds. Each round starts a fresh stack, so
every round's first deploy is a true first publish (moto keeps objects in memory)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.bench.benchstack import deploy, s3_environ, start_stack
from tests.bench.goals import Goal
from tests.bench.references import References
from tests.bench.trees import Tree, change_one_file

Samples = dict[str, list[float]]
# What a deployment's phases must add up to for the platform-overhead row.
WORK_PHASES = ("cloning", "uploading", "building", "publishing")


def buildq_round(api: str, tree: Tree, warmup: Path, marker: str) -> dict[str, float]:
    """A warm-up deploy of a tiny site, then the tree: first deploy, the same commit
    again, then one file changed (a new commit)."""
    out: dict[str, float] = {}
    with httpx.Client(timeout=30) as client:
        deploy(client, api, warmup, "warmup")
        first = deploy(client, api, tree.repo, "tree")
        unchanged = deploy(client, api, tree.repo, "tree")
        change_one_file(tree, marker)
        one_file = deploy(client, api, tree.repo, "tree")
    out["cloning"] = first.phase("cloning")
    out["uploading"] = first.phase("uploading")
    out["clone_ship"] = out["cloning"] + out["uploading"]
    out["building"] = first.phase("building")
    out["publish_first"] = first.phase("publishing")
    out["live_first"] = first.post_to_live_s
    out["overhead_first"] = first.post_to_live_s - sum(first.phase(p) for p in WORK_PHASES)
    out["publish_unchanged"] = unchanged.phase("publishing")
    out["live_unchanged"] = unchanged.post_to_live_s
    out["publish_one_file"] = one_file.phase("publishing")
    out["live_one_file"] = one_file.post_to_live_s
    return out


def reference_round(refs: References, tree: Tree) -> dict[str, float]:
    put_s, prefix = refs.put_per_file(tree)
    get_s = refs.get_per_file(tree, prefix)
    cp_s, sync_s = refs.aws_cp_then_sync(tree)
    return {"seed_put": put_s, "seed_get": get_s, "aws_cp": cp_s, "aws_sync": sync_s}


def run_transfer(
    tree: Tree, warmup: Path, scratch: Path, rounds: int, say: Callable[[str], None]
) -> Samples:
    """``rounds`` rounds, each on a fresh stack, buildq and references alternating first."""
    samples: Samples = {}
    for round_no in range(rounds):
        stack = start_stack(scratch / f"transfer-{round_no}", deployers=2)
        try:
            refs = References(stack.s3_url, s3_environ(), scratch)
            order = ("buildq", "refs") if round_no % 2 == 0 else ("refs", "buildq")
            for which in order:
                if which == "buildq":
                    got = buildq_round(stack.api, tree, warmup, f"round {round_no + 1}")
                else:
                    got = reference_round(refs, tree)
                for key, value in got.items():
                    samples.setdefault(key, []).append(value)
        finally:
            stack.stop()
        say(f"transfer round {round_no + 1}/{rounds} done")
    return samples


@dataclass(frozen=True)
class Row:
    """One line of the table: buildq's measure against a reference (or info only)."""

    measure: str
    ours: str
    reference: str
    reference_label: str
    goal: str | None = None  # the GOAL name; None: shown for information
    target: float = 0.0


ROWS = (
    Row("ship source (uploading phase)", "uploading", "seed_put", "one PUT per file",
        "transfer.ship_vs_put_per_file", 0.04),
    Row("clone + ship", "clone_ship", "seed_put", "one PUT per file",
        "transfer.clone_ship_vs_put_per_file", 0.10),
    Row("fetch + extract + true (building)", "building", "seed_get", "one GET per file",
        "transfer.building_vs_get_per_file", 0.06),
    Row("first publish (publishing phase)", "publish_first", "aws_cp", "aws s3 cp --recursive",
        "transfer.first_publish_vs_aws_cp", 0.8),
    Row("publish, unchanged redeploy", "publish_unchanged", "publish_first", "first publish",
        "transfer.unchanged_publish_vs_first", 0.05),
    Row("POST->live, unchanged redeploy", "live_unchanged", "seed_put", "one PUT per file",
        "transfer.live_unchanged_vs_put_per_file", 0.25),
    Row("platform overhead, first deploy", "overhead_first", "live_first", "its POST->live",
        "transfer.platform_overhead", 0.10),
    Row("POST->live, first deploy", "live_first", "seed_put", "one PUT per file"),
    Row("publish, one file changed", "publish_one_file", "publish_first", "first publish"),
    Row("POST->live, one file changed", "live_one_file", "seed_put", "one PUT per file"),
    Row("aws s3 sync, unchanged (2nd run)", "aws_sync", "aws_cp", "aws s3 cp --recursive"),
)  # fmt: skip


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def transfer_table(samples: Samples) -> tuple[list[str], list[Goal]]:
    """The table's lines (ratio = median over median, same run) and its goals."""
    head = ("measure", "buildq, median (min-max)", "reference, median (min-max)", "ratio",
            "goal", "met?")  # fmt: skip
    widths = (34, 26, 48, 8, 9, 5)
    lines = ["".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    goals: list[Goal] = []
    for row in ROWS:
        ours, ref = samples[row.ours], samples[row.reference]
        ratio = statistics.median(ours) / statistics.median(ref)
        goal_text, met = "", ""
        if row.goal is not None:
            goal = Goal(row.goal, ratio, row.target)
            goals.append(goal)
            goal_text, met = f"<= {row.target:g}x", "yes" if goal.met else "NO"
        cells = (row.measure, spread(ours), f"{row.reference_label} {spread(ref)}",
                 f"{ratio:.3f}x", goal_text, met)  # fmt: skip
        lines.append("".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return lines, goals
