"""Paused queues: stored in ``pgcelery_queue_pause``, obeyed by every worker at once.

A paused queue still accepts messages, and tasks already running finish; workers only stop
claiming from it. Each consuming channel keeps the set of paused queues in memory and reads the
(tiny) table again when its copy is older than :data:`REFRESH` seconds, before a claim, so a
pause takes effect within that time and costs a claim nothing in between: no statement per
task, and the claim query itself is unchanged. Resuming sends the queue's wake-up, so idle
workers claim at once. The rows survive worker restarts; ``pgcelery queue resume`` (or
:func:`resume_queue`) is the only way out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from pgcelery import dsn
from pgcelery.schema.names import MESSAGE_CHANNEL, Names
from pgcelery.settings import Settings

#: Seconds a channel trusts its copy of the paused set (a pause applies within this, well
#: inside the one second promised).
REFRESH = 0.5

Execute = Callable[..., psycopg.Cursor[Any]]


def pause(conn: psycopg.Connection[Any], names: Names, queue: str) -> bool:
    """Pause ``queue``; False if it was paused already."""
    cur = conn.execute(
        f"INSERT INTO {names.pause} (queue) VALUES (%s) ON CONFLICT (queue) DO NOTHING", (queue,)
    )
    return cur.rowcount == 1


def resume(conn: psycopg.Connection[Any], names: Names, queue: str) -> bool:
    """Resume ``queue`` and wake its workers; False if it was not paused."""
    cur = conn.execute(
        f"WITH r AS (DELETE FROM {names.pause} WHERE queue = %s RETURNING queue)"
        f" SELECT pg_notify(%s, q.id::text) FROM r LEFT JOIN {names.queue} q ON q.name = r.queue",
        (queue, MESSAGE_CHANNEL),
    )
    return cur.rowcount == 1


def paused(execute: Execute, names: Names) -> frozenset[str]:
    """The names of the paused queues."""
    return frozenset(row[0] for row in execute(f"SELECT queue FROM {names.pause}").fetchall())


class PauseCache:
    """A channel's copy of the paused set, read again every :data:`REFRESH` seconds."""

    def __init__(self, names: Names, refresh: float = REFRESH) -> None:
        self._names = names
        self._refresh = refresh
        self._paused: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def filter(self, execute: Execute, queues: list[str]) -> list[str]:
        """``queues`` without the paused ones."""
        if time.monotonic() - self._read_at >= self._refresh:
            self._paused = paused(execute, self._names)
            self._read_at = time.monotonic()
        if not self._paused:
            return queues
        return [q for q in queues if q not in self._paused]


def _connect(settings: Settings | None) -> tuple[psycopg.Connection[Any], Names]:
    settings = settings or Settings()
    conn = psycopg.connect(dsn.libpq_url(settings.database_url), autocommit=True)
    return conn, Names(settings.schema_name)


def pause_queue(name: str, settings: Settings | None = None) -> bool:
    """Pause queue ``name`` on every worker (within a second), until :func:`resume_queue`.

    The queue still accepts messages and running tasks finish. Returns False if it was
    paused already. Reads ``DATABASE_URL`` unless ``settings`` are given.
    """
    conn, names = _connect(settings)
    with conn:
        return pause(conn, names, name)


def resume_queue(name: str, settings: Settings | None = None) -> bool:
    """Let the workers claim from queue ``name`` again; False if it was not paused."""
    conn, names = _connect(settings)
    with conn:
        return resume(conn, names, name)
