"""The printed result of ``make chaos``: one Markdown row per scenario, and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.chaos_load import WATCHED_TABLES, TableStats
from bench.chaos_tally import Tally
from bench.chaos_workers import OwnExit


@dataclass
class ScenarioResult:
    name: str
    detail: str
    tally: Tally
    own_exits: list[OwnExit]
    kills: int
    tables: dict[str, TableStats]
    peak_backlog: int
    publish_errors: dict[str, int]
    log_lines: list[tuple[int, str]]
    drain_seconds: float
    leftover: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def judge(result: ScenarioResult, recovery_limit: float) -> None:
    """Fill ``result.failures`` with every target the scenario missed."""
    tally = result.tally
    if tally.lost:
        result.failures.append(f"{tally.lost} lost (e.g. {', '.join(tally.lost_examples)})")
    if tally.unexplained_duplicates:
        result.failures.append(f"{tally.unexplained_duplicates} duplicates not from a kill")
    if result.own_exits:
        exits = ", ".join(f"{e.slot} rc={e.returncode}" for e in result.own_exits)
        result.failures.append(f"workers exited on their own: {exits}")
    if result.leftover:
        result.failures.append(f"{len(result.leftover)} messages never acked (left in the queue)")
    if tally.recovery is None:
        result.failures.append("did not recover: a task produced before the fault ended never ran")
    elif tally.recovery > recovery_limit:
        result.failures.append(f"recovery {tally.recovery:.1f} s > {recovery_limit:.0f} s")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _recovery(tally: Tally) -> str:
    return "never" if tally.recovery is None else f"{tally.recovery:.1f}"


def scenario_table(results: list[ScenarioResult]) -> str:
    lines = [
        "| scenario | fault | produced | lost | duplicates (allowed) | failed publishes (ran) "
        "| done/s warm-up / fault / recovery | recovery s | own exits | stalled "
        "| peak backlog | left in queue | targets |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        t = r.tally
        rates = " / ".join(f"{rate:.0f}" for rate in t.rates)
        verdict = "met" if not r.failures else "**not met**"
        lines.append(
            f"| {r.name} | {r.detail} | {t.produced:,} | {t.lost} "
            f"| {t.duplicates} ({t.allowed_duplicates}) "
            f"| {t.failed_publishes} ({t.failed_publishes_ran}) | {rates} | {_recovery(t)} "
            f"| {len(r.own_exits)} | {len(t.stalled)} | {r.peak_backlog:,} | {len(r.leftover)} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def table_sizes(results: list[ScenarioResult]) -> str:
    lines = [
        "| scenario | " + " | ".join(WATCHED_TABLES) + " |",
        "|---|" + "---:|" * len(WATCHED_TABLES),
    ]
    for r in results:
        cells = [
            f"{_mb(r.tables[name].peak_bytes)}, {r.tables[name].peak_dead:,} dead"
            for name in WATCHED_TABLES
        ]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def details(results: list[ScenarioResult]) -> str:
    """Per scenario: what missed its target, publish errors, and the workers' loudest lines."""
    out: list[str] = []
    for r in results:
        out.append(f"### {r.name}")
        out.append(f"- drain after the producer stopped: {r.drain_seconds:.1f} s")
        for example in r.tally.duplicate_examples:
            out.append(f"- duplicate: {example}")
        for message in r.leftover[:5]:
            out.append(f"- left in the queue after the drain: {message}")
        for failure in r.failures:
            out.append(f"- NOT MET: {failure}")
        if r.tally.stalled:
            out.append(f"- stalled at the end (ran nothing lately): {', '.join(r.tally.stalled)}")
        if r.publish_errors:
            errors = ", ".join(f"{kind} x{n}" for kind, n in sorted(r.publish_errors.items()))
            out.append(f"- failed publishes: {errors}")
        for count, line in r.log_lines:
            out.append(f"- worker log x{count}: `{line}`")
    return "\n".join(out)
