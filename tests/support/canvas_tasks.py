"""Tasks for canvas tests: chord bodies that record each run, and a header task that kills
its worker once, after its result is stored and counted but before its message is acked."""

from __future__ import annotations

import os
from typing import Any

from celery import Task, shared_task
from celery.signals import task_postrun

from tests.support.broker_tasks import _conn


def _record(task: Task, label: str) -> None:
    _conn(task).execute(
        "INSERT INTO test_runs (label, task_id, pid) VALUES (%s, %s, %s)",
        (label, task.request.id, os.getpid()),
    )


@shared_task(name="tests.canvas.collect", bind=True)
def collect(self: Task, results: list[Any], label: str = "body") -> list[Any]:
    """A chord body: records that it ran, returns what the header gave it."""
    _record(self, label)
    return results


@shared_task(name="tests.canvas.total")
def total(numbers: list[int]) -> int:
    return sum(numbers)


@shared_task(name="tests.canvas.errback", bind=True)
def errback(self: Task, failed_task_id: str) -> None:
    """An error callback (Celery calls it with the failed task's id): records that id."""
    _conn(self).execute(
        "INSERT INTO test_runs (label, task_id, pid) VALUES ('errback', %s, %s)",
        (failed_task_id, os.getpid()),
    )


@shared_task(name="tests.canvas.die_after_storing", bind=True)
def die_after_storing(self: Task, x: int, label: str) -> int:
    """Returns ``x``; on its first run its worker process dies right after the result is
    stored and the chord counted (task_postrun), before the ack: the message comes back."""
    _record(self, label)
    return x


@task_postrun.connect
def _die_once(sender: Any = None, task_id: str | None = None, **kwargs: Any) -> None:
    if getattr(sender, "name", None) != "tests.canvas.die_after_storing":
        return
    conn = _conn(sender)
    row = conn.execute("SELECT count(*) FROM test_runs WHERE task_id = %s", (task_id,)).fetchone()
    if row is not None and row[0] == 1:  # the first run
        os._exit(9)
