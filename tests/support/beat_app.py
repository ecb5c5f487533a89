"""The app the beat tests run: pgcelery's defaults plus one entry due every second.

With ``TEST_BEAT_TERMINATE_PUBLISHES=N`` in its environment, the first N runs a beat process
sends have its database session terminated (``pg_terminate_backend``, from a second session)
from inside ``apply_async``, just before the message is written: the leader loses its session,
and with it the leader lock, in the middle of a send.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psycopg
from celery.signals import before_task_publish

from pgcelery import create_app, dsn
from pgcelery.settings import settings_of

EVERY_SECOND = "tests.every_second"

app = create_app(include=["tests.support.tasks", "tests.support.broker_tasks"])
app.conf.beat_schedule.update(
    {EVERY_SECOND: {"task": "tests.record_run", "schedule": 1.0, "args": ("beat",)}}
)

log = logging.getLogger(__name__)
_terminations = {"left": int(os.environ.get("TEST_BEAT_TERMINATE_PUBLISHES", "0"))}


@before_task_publish.connect
def _terminate_own_session(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if _terminations["left"] <= 0:
        return
    _terminations["left"] -= 1
    url = dsn.libpq_url(settings_of(app).database_url)
    with psycopg.connect(url, autocommit=True) as conn:
        # The timeout makes the call wait until the backend has gone, so the send that follows
        # meets a dead session rather than racing the signal.
        conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE application_name LIKE %s",
            (f"pgcelery-beat:%:{os.getpid()}",),
        )
    task_id = (headers or {}).get("id")
    log.warning("test.terminated_own_session", extra={"task_id": task_id})
