"""Pausing a queue: stored in the database, obeyed by every worker within a second, kept across
a worker restart; running tasks finish and the queue still accepts messages."""

from __future__ import annotations

import time

from celery import Celery

from pgcelery import pause_queue, resume_queue
from pgcelery.settings import Settings
from tests.support.postgres import scalar
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

APP = ["celery", "-A", "tests.support.app", "worker", "-l", "WARNING", "-P", "solo", "-c", "1"]
QUEUES = ["-Q", "celery,other"]
CLAIMED = (
    "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
    " WHERE q.name = 'celery' AND m.deliveries > 0"
)


def _alive(runs_app: Celery) -> None:
    """Both kinds of work are served: the worker is up and claiming from ``other``."""
    assert runs_app.send_task("tests.add", args=(1, 1), queue="other").get(timeout=60) == 2


def _never_claimed(runs_db: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert scalar(runs_db, CLAIMED) == 0, "a paused queue's message was claimed"
        time.sleep(0.05)


def test_pause_stops_every_worker_and_survives_a_restart(runs_app: Celery, runs_db: str) -> None:
    settings = Settings(DATABASE_URL=runs_db)
    with (
        worker_process(runs_db, [*APP, *QUEUES, "-n", "a@%h"]) as first,
        worker_process(runs_db, [*APP, *QUEUES, "-n", "b@%h"]),
    ):
        assert runs_app.send_task("tests.add", args=(2, 2)).get(timeout=60) == 4
        _alive(runs_app)
        running = runs_app.send_task("tests.record_run", args=("running", 2.0))
        wait_until(lambda: scalar(runs_db, CLAIMED) == 1, timeout=60, what="the long task")
        paused_at = time.monotonic()
        assert pause_queue("celery", settings) is True
        assert pause_queue("celery", settings) is False
        assert running.get(timeout=60) == "running"  # a running task finishes
        wait_until(lambda: time.monotonic() - paused_at >= 1.0, what="one second")
        waiting = [runs_app.send_task("tests.add", args=(i, 0)) for i in range(4)]
        _never_claimed(runs_db, 3.0)
        _alive(runs_app)
        # A worker restarted while the queue is paused still leaves it alone.
        first.stop()
        with worker_process(runs_db, [*APP, *QUEUES, "-n", "c@%h"]):
            _alive(runs_app)
            _never_claimed(runs_db, 2.0)
            assert resume_queue("celery", settings) is True
            assert [r.get(timeout=60) for r in waiting] == [0, 1, 2, 3]
    assert resume_queue("celery", settings) is False
