"""Tasks under fair share and limits: each records when it started and ended, and for whom,
in ``test_spans``, so a test can count what ran at once and in what order."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from celery import Task, shared_task

from pgcelery import tenant_task
from tests.support import broker_tasks
from tests.support.broker_tasks import _conn

SPANS_TABLE = """CREATE TABLE IF NOT EXISTS test_spans (
    label text NOT NULL, tenant text, task_id text NOT NULL, pid int NOT NULL,
    started timestamptz NOT NULL, ended timestamptz NOT NULL)"""


def _execute(task: Task, query: str, params: tuple[Any, ...] = ()) -> Any:
    try:
        return _conn(task).execute(query, params).fetchone()
    except psycopg.OperationalError:
        # A fault test terminated this connection too; the task's own code reconnects (as in
        # tests.record_run): what is under test is the broker.
        broker_tasks._local.conn = None
        return _conn(task).execute(query, params).fetchone()


def _span(task: Task, label: str, seconds: float, tenant: str | None = None) -> str:
    started = _execute(task, "SELECT clock_timestamp()")
    time.sleep(seconds)
    _execute(
        task,
        "INSERT INTO test_spans (label, tenant, task_id, pid, started, ended)"
        " VALUES (%s, %s, %s, %s, %s, clock_timestamp()) RETURNING 1",
        (label, tenant, task.request.id, os.getpid(), started[0] if started else None),
    )
    return label


@tenant_task(name="tests.limits.tenant_work", bind=True)
def tenant_work(self: Task, tenant_id: str, label: str, seconds: float = 0.0) -> str:
    return _span(self, label, seconds, tenant_id)


@shared_task(name="tests.limits.global_work", bind=True)
def global_work(self: Task, label: str, seconds: float = 0.0) -> str:
    return _span(self, label, seconds)


@shared_task(name="tests.limits.capped", bind=True, concurrency_limit=2)
def capped(self: Task, label: str, seconds: float = 0.5) -> str:
    return _span(self, label, seconds)


@tenant_task(
    name="tests.limits.one_per_tenant", bind=True, concurrency_limit=1, concurrency_key="tenant"
)
def one_per_tenant(self: Task, tenant_id: str, label: str, seconds: float = 0.5) -> str:
    return _span(self, label, seconds, tenant_id)


@shared_task(name="tests.limits.rated", bind=True, global_rate_limit="5/s")
def rated(self: Task, label: str) -> str:
    return _span(self, label, 0.0)
