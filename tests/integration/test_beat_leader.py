"""The beat leader's session, in one process: the lease, the fence, which errors end leadership.

The acceptance tests (tests/acceptance/test_beat_leader.py) run the same cases with real beat
processes; these pin each rule down on its own, against a real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.scheduling.beat import PgScheduler
from pgcelery.scheduling.leader import LeaderSession, LeadershipLost
from pgcelery.settings import Settings
from tests.support.postgres import libpq, scalar
from tests.support.waiting import wait_until

LEASE = 1.0


@pytest.fixture
def beat_app(database_url: str) -> Iterator[Celery]:
    settings = Settings(
        DATABASE_URL=database_url,
        PGCELERY_METRICS_ENABLED=False,
        PGCELERY_BEAT_LEASE=LEASE,
        PGCELERY_BEAT_STANDBY_INTERVAL=0.1,
    )
    app = create_app("beat-leader-test", include=["tests.support.tasks"], settings=settings)
    yield app
    app.close()


@contextmanager
def scheduler(app: Celery) -> Iterator[PgScheduler]:
    beat = PgScheduler(app)
    try:
        yield beat
    finally:
        beat.close()


def _terminate(session: LeaderSession, database_url: str) -> None:
    backend = session.connection.info.backend_pid
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s, 10000)", (backend,))


def test_a_leader_silent_for_the_lease_is_replaced_and_steps_down(beat_app: Celery) -> None:
    with scheduler(beat_app) as first, scheduler(beat_app) as second:
        first.tick()
        second.tick()
        assert first.is_leader
        assert not second.is_leader

        # From here on the first says nothing, as a stopped process would: the server ends its
        # session once the lease has passed, and the lock is free.
        wait_until(
            lambda: (second.tick(), second.is_leader)[1],
            timeout=LEASE + 20,
            interval=0.1,
            what="the standby to take the lock of a silent leader",
        )
        first.tick()
        assert not first.is_leader
        assert second.is_leader


def test_a_reconnected_session_does_not_lead(database_url: str) -> None:
    session = LeaderSession(database_url, "public", lease=30.0)
    try:
        assert session.try_lead()
        _terminate(session, database_url)
        with pytest.raises(psycopg.OperationalError):
            session.fence()
        # The next statement needs a new session, and a new session holds no lock.
        assert session.connection.execute("SELECT 1").fetchone() == (1,)
        assert not session.leading
        with pytest.raises(LeadershipLost):
            session.fence()
    finally:
        session.close()


def test_the_fence_stops_a_session_that_no_longer_holds_the_lock(database_url: str) -> None:
    session = LeaderSession(database_url, "public", lease=30.0)
    try:
        assert session.try_lead()
        session.fence()
        session.connection.execute("SELECT pg_advisory_unlock(%s)", (session.key,))
        with pytest.raises(LeadershipLost):
            session.fence()
        assert not session.leading
    finally:
        session.close()


def test_an_entry_that_cannot_be_sent_does_not_end_leadership(
    beat_app: Celery, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The arguments cannot be serialized: apply_async fails, but the session is fine.
    unsendable = {"task": "tests.echo", "schedule": 0.1, "args": (object(),)}
    beat_app.conf.beat_schedule.update({"tests.unsendable": unsendable})
    with scheduler(beat_app) as beat:
        wait_until(
            lambda: (beat.tick(), "pgcelery.beat.send_failed" in caplog.text)[1],
            timeout=20,
            interval=0.05,
            what="a failed send",
        )
        assert beat.is_leader
        assert "pgcelery.beat.stepped_down" not in caplog.text
    assert scalar(database_url, "SELECT count(*) FROM kombu_message") == 0
    sent = "SELECT total_run_count FROM pgcelery_beat WHERE name = 'tests.unsendable'"
    assert scalar(database_url, sent) == 0
