"""STARTED is stored for tasks that run long enough to be seen running, never over a result;
results are stored and read with and without ``result_extended``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery
from celery.app.task import Context
from celery.result import AsyncResult

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.postgres import libpq
from tests.support.waiting import wait_until
from tests.support.workers import solo_worker

# Every status a task's row is written with, in order: what the backend wrote, not what it
# ended as.
STATUS_LOG = """
CREATE TABLE status_log (n bigserial, task_id text, status text);
CREATE FUNCTION log_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO status_log (task_id, status) VALUES (NEW.task_id, NEW.status);
  RETURN NULL;
END $$;
CREATE TRIGGER log_status AFTER INSERT OR UPDATE ON celery_taskmeta
  FOR EACH ROW EXECUTE FUNCTION log_status();
"""


def _written(database_url: str, task_id: str) -> list[str]:
    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute(
            "SELECT status FROM status_log WHERE task_id = %s ORDER BY n", (task_id,)
        ).fetchall()
    return [str(row[0]) for row in rows]


def _app(database_url: str, **env: object) -> Celery:
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        conn.execute(STATUS_LOG)
    settings = Settings(DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False, **env)
    return create_app("started-test", include=["tests.support.tasks"], settings=settings)


@pytest.fixture
def logged_app(database_url: str) -> Iterator[Celery]:
    app = _app(database_url)
    yield app
    app.close()


def test_a_short_task_goes_from_pending_to_its_result_in_one_write(
    logged_app: Celery, database_url: str
) -> None:
    with solo_worker(logged_app):
        result = logged_app.send_task("tests.add", (2, 3))
        assert result.get(timeout=30) == 5
        failed = logged_app.send_task("tests.fail", ("boom",))
        failed.get(timeout=30, propagate=False)
    assert _written(database_url, result.id) == ["SUCCESS"]
    assert _written(database_url, failed.id) == ["FAILURE"]


def test_a_long_task_shows_started_while_it_runs(logged_app: Celery, database_url: str) -> None:
    with solo_worker(logged_app):
        result = logged_app.send_task("tests.sleep", (2.0,))
        wait_until(
            lambda: AsyncResult(result.id, app=logged_app).state == "STARTED",
            timeout=30,
            what="the STARTED state",
        )
        meta = AsyncResult(result.id, app=logged_app).info
        assert meta["hostname"]
        assert meta["pid"]
        assert result.get(timeout=30) == 2.0
    assert _written(database_url, result.id) == ["STARTED", "SUCCESS"]


def test_a_delay_of_zero_stores_every_start_at_once(database_url: str) -> None:
    app = _app(database_url, PGCELERY_STARTED_STATE_DELAY=0)
    try:
        with solo_worker(app):
            result = app.send_task("tests.add", (1, 1))
            assert result.get(timeout=30) == 2
        assert _written(database_url, result.id) == ["STARTED", "SUCCESS"]
    finally:
        app.close()


def test_results_without_result_extended(database_url: str) -> None:
    app = _app(database_url)
    app.conf.result_extended = False
    try:
        with solo_worker(app):
            ok = app.send_task("tests.add", (2, 3))
            bad = app.send_task("tests.fail", ("boom",))
            assert ok.get(timeout=30) == 5
            with pytest.raises(RuntimeError, match="boom"):
                bad.get(timeout=30)
        assert AsyncResult(ok.id, app=app).status == "SUCCESS"
        with psycopg.connect(libpq(database_url)) as conn:
            row = conn.execute(
                "SELECT name, args FROM celery_taskmeta WHERE task_id = %s", (ok.id,)
            ).fetchone()
        assert row == (None, None)  # the extended columns stay empty
    finally:
        app.close()


def test_a_start_stored_on_behalf_of_another_task_is_written_at_once(
    logged_app: Celery, database_url: str
) -> None:
    """A tool or test playing another worker (no request: not the task's own tracer)."""
    task_id = str(uuid.uuid4())
    logged_app.backend.store_result(task_id, {"hostname": "other@host"}, "STARTED")
    assert _written(database_url, task_id) == ["STARTED"]
    assert logged_app.backend.get_state(task_id) == "STARTED"


def test_a_process_reads_its_own_held_back_start(logged_app: Celery, database_url: str) -> None:
    task_id = str(uuid.uuid4())
    request = Context(
        id=task_id, task="tests.add", args=[1, 2], kwargs={}, hostname="w@host",
        delivery_info={"routing_key": "celery"},
    )  # fmt: skip
    logged_app.backend.store_result(
        task_id, {"pid": 1, "hostname": "w@host"}, "STARTED", request=request
    )
    assert _written(database_url, task_id) == []  # held back for the delay
    assert logged_app.backend.get_state(task_id) == "STARTED"  # but this process sees it
    assert _written(database_url, task_id) == ["STARTED"]
