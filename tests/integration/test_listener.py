"""The LISTEN connection: survives many open files and lost connections, one per database,
closed when no longer used, and reported by /health when it is down."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.broker import listener
from pgcelery.results import waiters
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

CHANNEL = "pgcelery_test_listener"


def _notify(conninfo: str, payload: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


@pytest.fixture
def many_open_files() -> Iterator[int]:
    """More than 1,024 descriptors open in this process, so the next socket's number is above
    what ``select()`` accepts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2048
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield max(fds)
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_notifications_arrive_in_a_process_with_more_than_1024_open_files(
    database_url: str, many_open_files: int
) -> None:
    assert many_open_files > 1024
    conninfo = postgres.libpq(database_url)
    got: list[str | None] = []
    assert listener.subscribe(conninfo, CHANNEL, got.append, wait=10)
    try:
        _notify(conninfo, "hello")
        wait_until(lambda: "hello" in got, timeout=10, what="the NOTIFY")
        found = listener.status(conninfo)
        assert found is not None
        assert found.connected
    finally:
        listener.unsubscribe(conninfo, CHANNEL, got.append)


def test_a_listener_down_is_reported_then_recovers(database_url: str, pg_admin_url: str) -> None:
    conninfo = postgres.libpq(database_url)
    name = conninfo.rsplit("/", 1)[1].split("?")[0]
    got: list[str | None] = []
    assert listener.subscribe(conninfo, CHANNEL, got.append, wait=10)
    admin = postgres.libpq(pg_admin_url)
    try:
        assert listener.health(conninfo)[0]
        with psycopg.connect(admin, autocommit=True) as conn:
            # No one may connect: the listener loses its connection and cannot get it back.
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        wait_until(
            lambda: not listener.health(conninfo)[0],
            timeout=listener.DOWN_GRACE + 20,
            interval=0.2,
            what="health to report the listener down",
        )
        assert "down" in listener.health(conninfo)[1]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    try:
        wait_until(lambda: listener.health(conninfo)[0], timeout=30, what="the listener back")
        # Back and listening: a reconnect calls every subscriber with None (look again).
        assert None in got
        _notify(conninfo, "again")
        wait_until(lambda: "again" in got, timeout=10, what="a NOTIFY after the reconnect")
    finally:
        listener.unsubscribe(conninfo, CHANNEL, got.append)


def test_the_last_subscriber_leaving_closes_the_connection(database_url: str) -> None:
    conninfo = postgres.libpq(database_url)
    first: list[str | None] = []
    second: list[str | None] = []
    assert listener.subscribe(conninfo, CHANNEL, first.append, wait=10)
    assert listener.subscribe(conninfo, "pgcelery_test_other", second.append, wait=10)
    listener.unsubscribe(conninfo, CHANNEL, first.append)
    assert listener.listening(conninfo)
    listener.unsubscribe(conninfo, "pgcelery_test_other", second.append)
    assert not listener.listening(conninfo)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                ).fetchone()
                == (0,)
            ),
            timeout=20,
            what="the LISTEN connection to close",
        )


@pytest.fixture
def two_databases(pg_admin_url: str, template_db: str) -> Iterator[list[str]]:
    names = [postgres.unique_name("pgc_two") for _ in range(2)]
    urls = [postgres.create_database(pg_admin_url, n, template=template_db) for n in names]
    yield urls
    for name in names:
        postgres.drop_database(pg_admin_url, name)


def _app(url: str, name: str) -> Celery:
    settings = Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False)
    return create_app(name, include=["tests.support.tasks"], settings=settings)


def test_two_apps_on_two_databases_are_each_woken_by_notify(
    two_databases: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waiters, "IDLE_RELEASE", 0.5)
    apps = [_app(url, f"two-{i}") for i, url in enumerate(two_databases)]
    worker = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "-l", "WARNING"]
    try:
        with worker_process(two_databases[0], worker), worker_process(two_databases[1], worker):
            for app in apps:
                for i in range(3):
                    # A polling interval longer than the timeout: only a NOTIFY can wake get().
                    result = app.send_task("tests.add", args=(i, 1))
                    assert result.get(timeout=20, interval=60) == i + 1
        # No waiter left: each database's LISTEN connection is closed after the idle delay.
        for url in two_databases:
            wait_until(
                lambda url=url: not listener.listening(postgres.libpq(url)),
                timeout=20,
                what="the idle result listener to close",
            )
    finally:
        for app in apps:
            app.close()
