"""Counting a ``make chaos`` scenario from the runs table: lost, duplicated, rates, recovery.

*Produced* are the ids whose ``send_task`` returned. A produced id with no row in
``chaos_runs`` after the drain is *lost*; every row beyond the first of an id is a
*duplicate*. A duplicate is *allowed* when the run before it happened in a process the harness
SIGKILLed: that task finished but its ack died with the process, the one re-run at-least-once
permits. Recovery is the time from the end of the fault until every task the producer's
timetable had due before that moment has run (its first run): it covers redelivery of leased
messages, tasks the producer could only send late, and the drain of the backlog.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos_load import Sent
from bench.chaos_server import connect


@dataclass(frozen=True)
class Phases:
    """Wall-clock boundaries of one scenario."""

    warmup: float
    fault: float
    recovery: float
    stopped: float  # the producer stopped; the drain follows
    drained: float
    fault_ended: float  # recovery is measured from here


@dataclass
class Tally:
    produced: int
    completed: int
    lost: int
    failed_publishes: int
    failed_publishes_ran: int
    duplicates: int
    allowed_duplicates: int
    rates: tuple[float, float, float]  # tasks/s completed in warm-up, fault, recovery
    recovery: float | None  # None: a task produced before the fault ended never ran
    stalled: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    duplicate_examples: list[str] = field(default_factory=list)

    @property
    def unexplained_duplicates(self) -> int:
        return self.duplicates - self.allowed_duplicates


def _runs(url: str) -> dict[str, list[tuple[float, int]]]:
    with connect(url, timeout=30) as conn:
        rows = conn.execute(
            "SELECT task_id, extract(epoch FROM at)::float8, pid FROM chaos_runs ORDER BY at"
        ).fetchall()
    runs: dict[str, list[tuple[float, int]]] = {}
    for task_id, at, pid in rows:
        runs.setdefault(str(task_id), []).append((float(at), int(pid)))
    return runs


def tally(
    url: str,
    sent: list[Sent],
    failed: list[Sent],
    killed_pids: set[int],
    phases: Phases,
    pids_by_slot: dict[str, set[int]],
    stall_window: float,
    pid_names: dict[int, str],
) -> Tally:
    runs = _runs(url)
    produced = {s.task_id: s.due for s in sent}
    lost = [task_id for task_id in produced if task_id not in runs]
    duplicates = allowed = 0
    examples: list[str] = []
    for task_id in produced:
        copies = runs.get(task_id, [])
        if len(copies) > 1:
            duplicates += len(copies) - 1
            # Each earlier copy run by a killed process explains one later copy.
            explained = sum(1 for _, pid in copies[:-1] if pid in killed_pids)
            allowed += explained
            if explained < len(copies) - 1 and len(examples) < 3:
                ran = ", ".join(
                    f"{time.strftime('%H:%M:%S', time.gmtime(at))}.{int(at % 1 * 1000):03d} "
                    f"pid {pid} ({pid_names.get(pid, '?')})"
                    for at, pid in copies
                )
                examples.append(f"{task_id} ran at {ran} (UTC)")
    first = {task_id: runs[task_id][0][0] for task_id in produced if task_id in runs}
    windows = (
        (phases.warmup, phases.fault),
        (phases.fault, phases.recovery),
        (phases.recovery, phases.stopped),
    )
    rates = tuple(
        sum(1 for at in first.values() if start <= at < end) / max(end - start, 1e-9)
        for start, end in windows
    )
    before = [task_id for task_id, due in produced.items() if due < phases.fault_ended]
    recovery: float | None = None
    if all(task_id in first for task_id in before):
        last = max((first[task_id] for task_id in before), default=phases.fault_ended)
        recovery = max(0.0, last - phases.fault_ended)
    since = phases.stopped - stall_window
    busy = {pid for copies in runs.values() for at, pid in copies if since <= at <= phases.stopped}
    stalled = [slot for slot, pids in pids_by_slot.items() if not pids or not pids & busy]
    return Tally(
        produced=len(produced),
        completed=len(produced) - len(lost),
        lost=len(lost),
        failed_publishes=len(failed),
        failed_publishes_ran=sum(1 for s in failed if s.task_id in runs),
        duplicates=duplicates,
        allowed_duplicates=min(allowed, duplicates),
        rates=(rates[0], rates[1], rates[2]),
        recovery=recovery,
        stalled=stalled,
        lost_examples=lost[:3],
        duplicate_examples=examples,
    )


def leftover_messages(url: str) -> list[str]:
    """Task messages still in ``kombu_message`` after the drain, and whether each task ran."""
    with connect(url, timeout=30) as conn:
        rows = conn.execute(
            "WITH left_over AS (SELECT m.id, m.deliveries, m.lease_token IS NOT NULL AS leased,"
            " extract(epoch FROM m.visible_at - now())::float8 AS visible_in,"
            " m.payload::json -> 'headers' ->> 'id' AS task_id"
            " FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
            " WHERE q.name = 'celery')"
            " SELECT l.id, l.deliveries, l.leased, l.visible_in, l.task_id,"
            " (SELECT count(*) FROM chaos_runs r WHERE r.task_id = l.task_id)"
            " FROM left_over l ORDER BY l.id"
        ).fetchall()
    return [
        f"message {mid}: task {task_id}, {deliveries} deliveries, "
        f"{'leased' if leased else 'not leased'}, visible in {visible_in:.1f} s, ran {ran}x"
        for mid, deliveries, leased, visible_in, task_id, ran in rows
    ]


_VARYING = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|0x[0-9a-f]+|\d+(\.\d+)?")


def log_summary(log_dir: Path, top: int = 8) -> list[tuple[int, str]]:
    """The most frequent WARNING-or-worse lines of the workers' logs, numbers blanked out."""
    counts: Counter[str] = Counter()
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                # Not JSON: a traceback or a warning printed before logging was set up.
                if "Error" in line or "Traceback" in line:
                    counts[_VARYING.sub("#", line.strip())[:140]] += 1
                continue
            if not isinstance(record, dict):
                continue
            if record.get("level") not in ("WARNING", "ERROR", "CRITICAL"):
                continue
            message = (str(record.get("message") or "").splitlines() or [""])[0]
            key = f"{record['level']} {record.get('logger', '?')}: {message}"
            if record.get("error"):
                key += f" ({record['error']})"
            counts[_VARYING.sub("#", key)[:140]] += 1
    return counts.most_common(top)
