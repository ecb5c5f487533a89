from __future__ import annotations

import psycopg
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery import dsn
from pgcelery.broker import transport
from pgcelery.results import backend
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


def test_plain_celery_app_on_the_pgcelery_backend_creates_no_tables(database_url: str) -> None:
    """An app built by hand (not ``create_app``) keeps Celery's defaults,
    ``database_create_tables_at_setup=True`` and ``result_extended=False``: the backend must
    still come up, create nothing, and store and read results."""
    transport.install()
    plain = Celery(
        "plain",
        broker=dsn.broker_url(database_url),
        backend=dsn.result_backend_url(database_url),
        set_as_current=False,
    )
    backend.install(plain)
    try:
        assert plain.conf.database_create_tables_at_setup is True
        assert plain.conf.result_extended is False
        assert isinstance(plain.backend, backend.PgBackend)
        plain.backend.store_result("plain-1", 5, "SUCCESS")
        assert plain.AsyncResult("plain-1").get(timeout=10) == 5
    finally:
        plain.close()
