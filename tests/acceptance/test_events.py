"""Worker events reach a real Celery EventReceiver (what `celery events`, Flower and
celery-exporter use) through the pgcelery broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.events import Collector
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

WORKER = [
    "celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1", "-E",
    "-n", "events@%h", "--without-mingle", "-l", "INFO",
]  # fmt: skip


@pytest.fixture
def events_app(database_url: str) -> Iterator[Celery]:
    app = create_app(
        "events-test",
        include=["tests.support.tasks"],
        settings=Settings(DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False),
    )
    app.conf.task_send_sent_event = True
    yield app
    app.close()


def test_task_and_worker_events_reach_an_event_receiver(
    events_app: Celery, database_url: str
) -> None:
    app = events_app
    collector = Collector(app)
    try:
        with worker_process(database_url, WORKER):
            # Workers learn of a new receiver within about a second: wait for its first event.
            wait_until(
                lambda: collector.of("worker-online") or collector.of("worker-heartbeat"),
                timeout=90,
                interval=0.1,
                what="a worker event",
            )
            ok = app.send_task("tests.add", (2, 3))
            bad = app.send_task("tests.fail", ("boom",))
            assert ok.get(timeout=60) == 5
            with pytest.raises(RuntimeError):
                bad.get(timeout=60, propagate=True)
            for kind in ("task-sent", "task-received", "task-started", "task-succeeded"):
                wait_until(lambda k=kind: collector.of(k, ok.id), timeout=30, what=kind)
            wait_until(lambda: collector.of("task-failed", bad.id), timeout=30, what="failed")
            succeeded = collector.of("task-succeeded", ok.id)
            assert len(succeeded) == 1
            assert succeeded[0]["result"] == "5"
            assert succeeded[0]["hostname"].startswith("events@")
            assert "boom" in collector.of("task-failed", bad.id)[0]["exception"]
            received = collector.of("task-received", ok.id)[0]
            assert received["name"] == "tests.add"
    finally:
        collector.stop()
