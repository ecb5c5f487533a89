"""Fault tests with real worker processes: killed workers, many workers, a restarted server."""

from __future__ import annotations

import signal
import threading
from contextlib import ExitStack

import psycopg
import pytest
import sqlalchemy as sa
from celery import Celery

from pgcelery import create_app, dsn, enqueue_in
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.broker_tasks import RUNS_TABLE
from tests.support.postgres import libpq, scalar
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

WORKER = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1", "-l", "WARNING"]


def test_sigkill_mid_task_twenty_times_loses_nothing(runs_app: Celery, runs_db: str) -> None:
    results = [runs_app.send_task("tests.record_run", args=(f"t{i}", 0.4)) for i in range(30)]
    env = {"PGCELERY_VISIBILITY_TIMEOUT": "1"}
    for _ in range(20):
        with worker_process(runs_db, WORKER, env) as worker:
            # Mid-task: the worker holds a lease on a message it has not finished.
            wait_until(
                lambda: scalar(
                    runs_db,
                    "SELECT count(*) FROM kombu_message"
                    " WHERE lease_token IS NOT NULL AND visible_at > now()",
                ),
                timeout=60,
                what="a claimed message",
            )
            worker.signal(signal.SIGKILL)
            worker.proc.wait(10)
    with worker_process(runs_db, WORKER, env):
        states = [r.get(timeout=120) and r.status for r in results]
    assert states == ["SUCCESS"] * len(results)
    labels = scalar(runs_db, "SELECT count(DISTINCT label) FROM test_runs")
    assert labels == len(results)
    assert scalar(runs_db, "SELECT count(*) FROM kombu_message") == 0


@pytest.mark.timeout(1500)
def test_four_workers_5000_tasks_each_run_once(runs_app: Celery, runs_db: str) -> None:
    total = 20_000
    engine = sa.create_engine(dsn.sync_url(runs_db))
    task = runs_app.tasks["tests.record_run"]
    # One transaction for the whole batch: fast, and all-or-nothing.
    with engine.begin() as conn, enqueue_in(conn):
        for i in range(total):
            task.apply_async(args=(f"n{i}",), ignore_result=True)
    engine.dispose()
    with ExitStack() as stack:
        workers = [stack.enter_context(worker_process(runs_db, WORKER)) for _ in range(4)]
        wait_until(
            lambda: scalar(runs_db, "SELECT count(*) FROM test_runs") >= total,
            timeout=900,
            interval=0.5,
            what="every task to run",
        )
        assert all(w.alive() for w in workers)
        wait_until(lambda: scalar(runs_db, "SELECT count(*) FROM kombu_message") == 0)
    assert scalar(runs_db, "SELECT count(*) FROM test_runs") == total
    assert scalar(runs_db, "SELECT count(DISTINCT task_id) FROM test_runs") == total
    assert scalar(runs_db, "SELECT count(DISTINCT pid) FROM test_runs") == 4


def test_postgres_restart_mid_load_loses_nothing_and_runs_nothing_twice() -> None:
    with postgres.restartable_server("restart") as server:
        url = server.create_database("restart")
        migrations.upgrade(url)
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute(RUNS_TABLE)
        app = create_app(
            "restart-client",
            include=["tests.support.broker_tasks"],
            settings=Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False),
        )
        sent: list[str] = []
        failed: list[BaseException] = []

        def produce() -> None:
            for i in range(150):
                try:
                    sent.append(app.send_task("tests.record_run", args=(f"r{i}", 0.02)).id)
                except Exception as exc:  # reported below: a publish must ride the restart out
                    failed.append(exc)

        with worker_process(url, WORKER) as one, worker_process(url, WORKER) as two:
            producer = threading.Thread(target=produce)
            producer.start()
            wait_until(lambda: len(sent) >= 30, timeout=60)
            server.stop()
            server.start()
            producer.join(120)
            assert not failed, failed
            assert len(sent) == 150
            wait_until(
                lambda: scalar(url, "SELECT count(DISTINCT label) FROM test_runs") == 150,
                timeout=180,
                interval=0.2,
                what="all tasks after the restart",
            )
            assert one.alive()
            assert two.alive()
            wait_until(lambda: scalar(url, "SELECT count(*) FROM kombu_message") == 0, timeout=60)
        assert scalar(url, "SELECT count(*) FROM test_runs") == 150
        app.close()
