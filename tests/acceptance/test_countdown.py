"""ETA and countdown tasks wait in the table, leased by no one, until they are due."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from contextlib import ExitStack

import psutil
import psycopg
from celery import Celery

from pgcelery import dsn
from tests.support.postgres import libpq, scalar
from tests.support.waiting import wait_until
from tests.support.workers import ROOT, worker_process

WORKER = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1", "-l", "WARNING"]


def _named(name: str) -> list[str]:
    return [*WORKER, "-n", f"{name}@%h"]


LEASED = "SELECT count(*) FROM kombu_message WHERE lease_token IS NOT NULL AND visible_at > now()"
MOST_HELD = (
    "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM kombu_message"
    " WHERE lease_token IS NOT NULL AND visible_at > now() GROUP BY claimed_by) held"
)


def _workers_up(url: str, count: int) -> None:
    wait_until(
        lambda: scalar(url, "SELECT count(*) FROM pgcelery_worker") >= count,
        timeout=60,
        what=f"{count} workers to start",
    )


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def test_countdown_tasks_are_not_leased_by_a_worker(runs_app: Celery, runs_db: str) -> None:
    with worker_process(runs_db, WORKER) as worker:
        assert runs_app.send_task("tests.add", args=(0, 0)).get(timeout=60) == 0
        idle = _rss_mb(worker.pid)
        for i in range(300):
            runs_app.send_task("tests.record_run", args=(f"later{i}",), countdown=3600)
        # A task sent after them has run: the worker has claimed since they were queued.
        assert runs_app.send_task("tests.add", args=(1, 1)).get(timeout=60) == 2
        assert _rss_mb(worker.pid) - idle < 5  # nothing of theirs is held in the worker
        assert scalar(runs_db, LEASED) == 0
        waiting = scalar(
            runs_db,
            "SELECT count(*) FROM kombu_message"
            " WHERE lease_token IS NULL AND visible_at > now() + interval '3500 seconds'",
        )
        assert waiting == 300
        assert worker.alive()
    assert scalar(runs_db, "SELECT count(*) FROM test_runs") == 0


def test_a_stock_kombu_producers_countdown_waits_too(runs_db: str) -> None:
    # A plain Celery app on kombu's own sqla transport: the insert trigger reads its eta.
    script = textwrap.dedent(
        f"""
        from celery import Celery
        producer = Celery(broker={dsn.broker_url(runs_db)!r})
        producer.send_task("tests.record_run", args=("stock",), countdown=3600)
        producer.send_task("tests.record_run", args=("stock-now",))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(libpq(runs_db), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT visible_at > now() + interval '3500 seconds' FROM kombu_message ORDER BY id"
        ).fetchall()
    assert rows == [(True,), (False,)]


def test_due_tasks_go_to_whichever_worker_is_free(runs_app: Celery, runs_db: str) -> None:
    with ExitStack() as stack:
        workers = [
            stack.enter_context(worker_process(runs_db, _named(name))) for name in ("one", "two")
        ]
        _workers_up(runs_db, 2)
        # Twenty half-second tasks: ten seconds of work, so a worker that claims every polling
        # interval (1 s) gets some even while the other is woken by its own acks.
        for i in range(20):
            runs_app.send_task("tests.record_run", args=(f"due{i}", 0.5), countdown=8)
        most: list[int] = []

        def all_ran() -> bool:
            # The most messages any one worker holds leased: its prefetch window (1), never
            # more, even though each of them carried an eta.
            most.append(scalar(runs_db, MOST_HELD))
            return scalar(runs_db, "SELECT count(*) FROM test_runs") == 20

        wait_until(all_ran, timeout=90, interval=0.05, what="all 20 countdown tasks")
        assert max(most) == 1, most
        ran_in = scalar(runs_db, "SELECT count(DISTINCT pid) FROM test_runs")
        assert ran_in == 2, "\n".join(w.output()[-3000:] for w in workers)
        assert all(w.alive() for w in workers)
    assert scalar(runs_db, "SELECT count(DISTINCT label) FROM test_runs") == 20


def test_a_worker_killed_before_they_are_due_delays_none(runs_app: Celery, runs_db: str) -> None:
    countdown = 6
    # A lease far longer than the test: a task held by the killed worker would not come back.
    env = {"PGCELERY_VISIBILITY_TIMEOUT": "300"}
    with ExitStack() as stack:
        doomed = stack.enter_context(worker_process(runs_db, _named("doomed"), env))
        stack.enter_context(worker_process(runs_db, _named("spared"), env))
        _workers_up(runs_db, 2)
        for i in range(20):
            runs_app.send_task("tests.record_run", args=(f"k{i}",), countdown=countdown)
        # Both workers have claimed since the tasks were queued.
        assert runs_app.send_task("tests.add", args=(2, 2)).get(timeout=60) == 4
        assert runs_app.send_task("tests.add", args=(3, 3)).get(timeout=60) == 6
        doomed.signal(signal.SIGKILL)
        doomed.proc.wait(10)
        wait_until(
            lambda: scalar(runs_db, "SELECT count(DISTINCT label) FROM test_runs") == 20,
            timeout=countdown + 30,
            interval=0.2,
            what="every countdown task, none held by the killed worker",
        )
    assert scalar(runs_db, "SELECT count(*) FROM test_runs") == 20
