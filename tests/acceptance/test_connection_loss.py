"""A broken broker connection never runs a task twice nor loses it, on every pool.

A worker's connections die under a running task: every backend of its database is terminated,
or the whole server restarts. Celery reconnects and closes the old channel; the message of the
running task must stay leased (not handed to the other thread, child or worker) and be acked
when the task finishes. Executions are counted in a table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.embedded import EmbeddedPostgres
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.broker_tasks import RUNS_TABLE
from tests.support.postgres import libpq, scalar
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

POOLS = {
    "solo": ["-P", "solo", "-c", "1"],
    "threads": ["-P", "threads", "-c", "2"],
    "prefork": ["-P", "prefork", "-c", "2"],
}
#: Shorter than the default, so a lost ack would show as a second run within the test.
ENV = {"PGCELERY_VISIBILITY_TIMEOUT": "10"}
TASK_SECONDS = 5.0


def _worker(pool: str) -> list[str]:
    return ["celery", "-A", "tests.support.app", "worker", *POOLS[pool], "-l", "WARNING"]


def _terminate_every_other_backend(url: str) -> int:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _status(url: str, task_id: str) -> str | None:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT status FROM celery_taskmeta WHERE task_id = %s", (task_id,)
        ).fetchone()
    return None if row is None else str(row[0])


def _run_through_fault(url: str, pool: str, fault: Callable[[], None]) -> None:
    """Start one 5 s task, break the worker's connections while it runs, count its runs."""
    app = create_app(
        "connection-loss-client",
        include=["tests.support.broker_tasks"],
        settings=Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False),
    )
    try:
        with worker_process(url, _worker(pool), ENV) as worker:
            # With two threads or children, a message handed back would be claimed again at
            # once by the idle one.
            task_id = app.send_task("tests.record_run", args=("once", TASK_SECONDS)).id
            wait_until(
                lambda: _status(url, task_id) == "STARTED", timeout=60, what="the task to start"
            )
            fault()
            wait_until(
                lambda: (
                    scalar(url, "SELECT count(*) FROM test_runs") >= 1
                    and scalar(url, "SELECT count(*) FROM kombu_message") == 0
                ),
                timeout=90,
                interval=0.1,
                what="the task to finish and its message to be acked",
            )
            runs = scalar(url, "SELECT count(*) FROM test_runs")
            assert runs == 1, worker.output()
            assert _status(url, task_id) == "SUCCESS"
            assert worker.alive(), worker.output()
    finally:
        app.close()


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_terminated_backends_run_a_running_task_once(runs_db: str, pool: str) -> None:
    def terminate() -> None:
        assert _terminate_every_other_backend(runs_db) > 0

    _run_through_fault(runs_db, pool, terminate)


@pytest.fixture
def restartable_server() -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A private PostgreSQL this test may stop and start, with a migrated database."""
    with postgres.restartable_server("connloss") as server:
        url = server.create_database("connloss")
        migrations.upgrade(url)
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute(RUNS_TABLE)
        yield server, url


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_postgres_restart_runs_a_running_task_once(
    restartable_server: tuple[EmbeddedPostgres, str], pool: str
) -> None:
    server, url = restartable_server

    def restart() -> None:
        server.stop()
        server.start()

    _run_through_fault(url, pool, restart)


def test_a_terminate_storm_under_load_runs_every_task_once(runs_app: Celery, runs_db: str) -> None:
    """Every backend of the database terminated every half second while tasks flow through a
    prefork and a threads worker: each task runs exactly once and none is left behind."""
    total = 200
    prefork = [*_worker("prefork"), "-n", "storm-prefork@%h"]
    threads = [*_worker("threads"), "-n", "storm-threads@%h"]
    with worker_process(runs_db, prefork, ENV) as one, worker_process(runs_db, threads, ENV):
        sent = 0
        deadline = time.monotonic() + 30
        while sent < total:
            for _ in range(20):
                runs_app.send_task("tests.record_run", args=(f"storm{sent}", 0.05))
                sent += 1
            _terminate_every_other_backend(runs_db)
            time.sleep(0.5)  # the storm's rhythm, not a wait for a condition
            assert time.monotonic() < deadline
        try:
            wait_until(
                lambda: _all_done(runs_db, total), timeout=120, interval=0.2, what="every task"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {_left(runs_db)}\n{one.output()[-4000:]}") from None
    assert scalar(runs_db, "SELECT count(*) FROM test_runs") == total


def _all_done(url: str, total: int) -> bool:
    ran = scalar(url, "SELECT count(DISTINCT label) FROM test_runs")
    return ran == total and scalar(url, "SELECT count(*) FROM kombu_message") == 0


def _left(url: str) -> str:
    with psycopg.connect(libpq(url)) as conn:
        ran = conn.execute("SELECT count(DISTINCT label), count(*) FROM test_runs").fetchone()
        left = conn.execute(
            "SELECT id, deliveries, lease_token IS NOT NULL, visible_at - now(), claimed_by"
            " FROM kombu_message"
        ).fetchall()
        dead = conn.execute(
            "SELECT reason, deliveries, task_id FROM pgcelery_dead_letter"
        ).fetchall()
        states = conn.execute(
            "SELECT status, count(*) FROM celery_taskmeta GROUP BY status"
        ).fetchall()
    return f"ran (distinct, all) {ran}; left in the queue {left}; dead {dead}; results {states}"
