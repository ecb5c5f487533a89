from __future__ import annotations

import psycopg
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from tests.support.postgres import libpq


def test_task_round_trip_and_message_deleted(
    app: Celery, worker: TestWorkController, database_url: str
) -> None:
    assert app.send_task("tests.add", args=(2, 3)).get(timeout=20) == 5
    ping = app.send_task("housekeeping.ping", kwargs={"correlation_id": "c-1"}).get(timeout=20)
    assert ping["status"] == "ok"
    assert ping["hostname"]
    assert ping["correlation_id"] == "c-1"
    with psycopg.connect(libpq(database_url)) as conn:
        assert conn.execute("SELECT count(*) FROM kombu_message").fetchone() == (0,)
        rows = conn.execute("SELECT status FROM celery_taskmeta").fetchall()
    assert sorted(r[0] for r in rows) == ["SUCCESS", "SUCCESS"]


def test_failure_is_recorded(app: Celery, worker: TestWorkController) -> None:
    result = app.send_task("tests.fail", args=("boom",))
    result.get(timeout=20, propagate=False)
    assert result.status == "FAILURE"
    assert "boom" in str(result.result)
