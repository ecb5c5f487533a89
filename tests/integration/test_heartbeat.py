"""Worker heartbeats: a running worker node keeps its row in pgcelery_worker, and removes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from pgcelery import connections, create_app
from pgcelery.observability.heartbeat import Heartbeat
from pgcelery.settings import Settings
from tests.support.logs import captured
from tests.support.waiting import wait_until


@pytest.fixture
def fast_app(database_url: str) -> Iterator[Celery]:
    settings = Settings(
        DATABASE_URL=database_url,
        PGCELERY_METRICS_ENABLED=False,
        PGCELERY_WORKER_HEARTBEAT_INTERVAL=0.2,
    )
    app = create_app("pgcelery-test", include=["tests.support.tasks"], settings=settings)
    yield app
    app.close()


def _rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute("SELECT * FROM pgcelery_worker")
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_a_worker_beats_while_it_runs_and_leaves_no_row(
    fast_app: Celery, database_url: str
) -> None:
    with ExitStack() as stack:
        worker = stack.enter_context(
            start_worker(fast_app, pool="solo", concurrency=1, perform_ping_check=False)
        )
        rows = wait_until(lambda: _rows(database_url), timeout=30, what="a heartbeat row")
        assert len(rows) == 1
        row = rows[0]
        assert row["hostname"] == worker.hostname
        assert row["pool"] == "solo"
        assert row["concurrency"] == 1
        assert "celery" in row["queues"]
        first: datetime = row["last_seen"]
        # Celery counts processed tasks per process: in-process workers of earlier tests count.
        before = row["processed"]
        assert fast_app.send_task("tests.add", (2, 3)).get(timeout=30) == 5
        later = wait_until(
            lambda: [r for r in _rows(database_url) if r["processed"] > before],
            timeout=30,
            what="the processed count to grow",
        )
        assert later[0]["last_seen"] > first
        assert later[0]["started_at"] == row["started_at"]
    assert _rows(database_url) == []


def test_a_beat_against_an_unreachable_database_is_logged_not_raised() -> None:
    settings = Settings(
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        PGCELERY_METRICS_ENABLED=False,
        PGCELERY_WORKER_HEARTBEAT_INTERVAL=0.5,
    )
    app = create_app("pgcelery-test", settings=settings)

    class Node:
        hostname = "unreachable@test"
        concurrency = 1

    node: Any = Node()
    node.app = app
    with captured("pgcelery.observability.heartbeat") as records:
        try:
            beat = Heartbeat(node)
            assert beat.beat() is False
            assert beat.beat() is False
        finally:
            app.close()
            connections.reset(beat.conninfo)
    failures = [r for r in records if r.getMessage().startswith("pgcelery.heartbeat.failed")]
    assert len(failures) == 1, "an outage is logged once, not at every beat"
