"""``pgcelery stats``: queue depths, work in flight, recent failures and live workers.

Everything is read from the tables in one short read-only transaction; nothing talks to the
workers, so it works when they are stuck or gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from pgcelery.schema.names import Names


@dataclass(frozen=True)
class QueueStats:
    name: str
    ready: int
    in_flight: int
    delayed: int
    oldest_ready_seconds: float | None


@dataclass(frozen=True)
class WorkerStats:
    hostname: str
    pid: int
    pool: str
    concurrency: int
    tasks_in_flight: int
    processed: int
    last_seen_seconds: float


@dataclass(frozen=True)
class Stats:
    queues: list[QueueStats] = field(default_factory=list)
    failures_last_hour: int = 0
    workers: list[WorkerStats] = field(default_factory=list)
    collected_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["collected_at"] = self.collected_at.isoformat() if self.collected_at else None
        return data


def collect(conn: psycopg.Connection[Any], schema: str = "public") -> Stats:
    """Read the statistics of the pgcelery tables in ``schema``."""
    names = Names(schema)
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        # ready: claimable now; in flight: leased by a worker; delayed: handed back with a
        # later visibility (a retry countdown or an expired-then-released lease).
        # kombu's timestamp column holds UTC without a zone.
        queues = conn.execute(
            f"""
            SELECT q.name,
                   count(m.id) FILTER (WHERE m.visible_at <= now()),
                   count(m.id) FILTER (WHERE m.visible_at > now() AND m.lease_token IS NOT NULL),
                   count(m.id) FILTER (WHERE m.visible_at > now() AND m.lease_token IS NULL),
                   extract(epoch FROM timezone('UTC', now())
                       - min(m.timestamp) FILTER (WHERE m.visible_at <= now()))
            FROM {names.queue} q LEFT JOIN {names.message} m ON m.queue_id = q.id AND m.visible
            GROUP BY q.name ORDER BY q.name
            """
        ).fetchall()
        failures = conn.execute(
            f"SELECT count(*) FROM {names.task} WHERE status = 'FAILURE'"
            " AND date_done > timezone('UTC', now()) - interval '1 hour'"
        ).fetchone()
        workers = conn.execute(
            f"SELECT hostname, pid, pool, concurrency, tasks_in_flight, processed,"
            f" extract(epoch FROM now() - last_seen) FROM {names.worker}"
            " ORDER BY hostname"
        ).fetchall()
        now = conn.execute("SELECT now()").fetchone()
    return Stats(
        queues=[
            QueueStats(
                name=str(name),
                ready=int(ready),
                in_flight=int(flight),
                delayed=int(delayed),
                oldest_ready_seconds=None if oldest is None else round(float(oldest), 3),
            )
            for name, ready, flight, delayed, oldest in queues
        ],
        failures_last_hour=int(failures[0]) if failures else 0,
        workers=[
            WorkerStats(
                hostname=str(row[0]),
                pid=int(row[1]),
                pool=str(row[2]),
                concurrency=int(row[3]),
                tasks_in_flight=int(row[4]),
                processed=int(row[5]),
                last_seen_seconds=round(float(row[6]), 3),
            )
            for row in workers
        ],
        collected_at=now[0] if now else None,
    )


def render_table(stats: Stats) -> str:
    """Plain-text tables for people; ``--json`` is the format for scripts."""
    lines = []
    queue_rows = [
        (
            q.name,
            str(q.ready),
            str(q.in_flight),
            str(q.delayed),
            "-" if q.oldest_ready_seconds is None else f"{q.oldest_ready_seconds:.1f}s",
        )
        for q in stats.queues
    ]
    lines += _table(("QUEUE", "READY", "IN FLIGHT", "DELAYED", "OLDEST READY"), queue_rows)
    lines.append("")
    lines.append(f"Failures in the last hour: {stats.failures_last_hour}")
    lines.append("")
    if stats.workers:
        worker_rows = [
            (
                w.hostname,
                str(w.pid),
                f"{w.pool}x{w.concurrency}",
                str(w.tasks_in_flight),
                str(w.processed),
                f"{w.last_seen_seconds:.0f}s ago",
            )
            for w in stats.workers
        ]
        lines += _table(
            ("WORKER", "PID", "POOL", "IN FLIGHT", "PROCESSED", "LAST SEEN"), worker_rows
        )
    else:
        lines.append("Workers: none registered")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        rows = [tuple("-" for _ in header)]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *rows)
    ]
