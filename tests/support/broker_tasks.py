"""Tasks that record each run in the test database, to count runs across worker processes."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
from celery import Task, shared_task

from pgcelery import dsn
from pgcelery.app import settings_of

RUNS_TABLE = """CREATE TABLE IF NOT EXISTS test_runs (
    label text NOT NULL, task_id text NOT NULL, pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())"""

_local = threading.local()


def _conn(task: Task) -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "pid", None) != os.getpid():
        url = dsn.libpq_url(settings_of(task.app).database_url)
        conn = _local.conn = psycopg.connect(url, autocommit=True)
        _local.pid = os.getpid()
    return conn


@shared_task(name="tests.record_run", bind=True)
def record_run(self: Task, label: str, sleep: float = 0.0) -> str:
    """Record that this task ran (label, id, worker pid); optionally sleep first."""
    if sleep:
        time.sleep(sleep)
    row = (label, self.request.id, os.getpid())
    insert = "INSERT INTO test_runs (label, task_id, pid) VALUES (%s, %s, %s)"
    try:
        _conn(self).execute(insert, row)
    except psycopg.OperationalError:
        # The fault tests terminate every backend, this task's own connection included: the
        # host code a task runs reconnects; what is under test is the broker, not this insert.
        _local.conn = None
        _conn(self).execute(insert, row)
    return label


@shared_task(name="tests.poison", bind=True)
def poison(self: Task, label: str) -> None:
    """Record the attempt, then kill the process running it (as a segfault or the OOM killer
    would): never acked. Only ever for subprocess workers."""
    _conn(self).execute(
        "INSERT INTO test_runs (label, task_id, pid) VALUES (%s, %s, %s)",
        (label, self.request.id, os.getpid()),
    )
    os._exit(13)
