"""The task ``make chaos`` runs in its workers (loaded by ``bench.chaos_app``).

Every execution inserts one row into ``chaos_runs``: the harness counts lost tasks (a produced
id with no row) and duplicates (an id with more than one row) from that table alone, and knows
which process ran each copy. The insert rides out the faults the harness injects (terminated
backends, a restarted server, no free connection slot) by reconnecting and trying again: a
task whose own bookkeeping failed would look lost when the broker did nothing wrong. Each
execution carries its own ``run_id``, so an insert retried after a commit whose reply was lost
does not count as a second run.

While it works, an execution keeps a marker file named after its process id in
``$CHAOS_INFLIGHT_DIR``: the harness reads those to SIGKILL a worker while it is mid-task,
rather than between tasks, which would test nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from celery import Task, shared_task

from pgcelery import dsn
from pgcelery.app import settings_of

RUNS_DDL = """CREATE TABLE IF NOT EXISTS chaos_runs (
    run_id uuid PRIMARY KEY, task_id text NOT NULL, seq bigint NOT NULL, pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())"""
TASK_NAME = "chaos.record"
#: How long one execution keeps trying to record itself before it gives up (and fails).
RECORD_DEADLINE = 180.0

_local = threading.local()


def _connection(task: Task) -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    # A prefork child inherits nothing usable from its parent: one connection per process.
    if conn is None or conn.closed or getattr(_local, "pid", None) != os.getpid():
        url = dsn.libpq_url(settings_of(task.app).database_url)
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5, application_name="chaos")
        _local.conn = conn
        _local.pid = os.getpid()
    return conn


def _forget_connection() -> None:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    _local.conn = None
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()


@shared_task(name=TASK_NAME, bind=True)
def record(task: Task, seq: int, sleep: float) -> int:
    """Sleep ``sleep`` seconds (the work), then insert this execution's row."""
    marker = _inflight_marker()
    if marker is not None:
        marker.write_text(str(task.request.id))
    try:
        if sleep:
            time.sleep(sleep)
        return _insert_run(task, seq)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


def _inflight_marker() -> Path | None:
    directory = os.environ.get("CHAOS_INFLIGHT_DIR")
    return Path(directory) / str(os.getpid()) if directory else None


def _insert_run(task: Task, seq: int) -> int:
    run_id = uuid.uuid4()
    deadline = time.monotonic() + RECORD_DEADLINE
    while True:
        try:
            _connection(task).execute(
                "INSERT INTO chaos_runs (run_id, task_id, seq, pid) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (run_id) DO NOTHING",
                (run_id, task.request.id, seq, os.getpid()),
            )
            return seq
        except psycopg.OperationalError:
            _forget_connection()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
