from __future__ import annotations

import psycopg
from celery import Celery

from pgcelery.observability.health import DatabaseProbe
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support.postgres import libpq


def test_healthy_database_passes_all_checks(settings: Settings) -> None:
    probe = DatabaseProbe(settings)
    try:
        report = probe.check()
    finally:
        probe.close()
    assert report.ok
    assert report.as_json()["status"] == "ok"
    assert report.checks["schema"].detail == f"schema at {migrations.head()}"
    assert probe.last is report


def test_unmigrated_database_fails_broker_and_schema(empty_database_url: str) -> None:
    probe = DatabaseProbe(Settings(DATABASE_URL=empty_database_url))
    try:
        body = probe.check().as_json()
    finally:
        probe.close()
    assert body["status"] == "fail"
    assert body["failing"] == ["broker", "schema"]
    assert body["checks"]["database"]["status"] == "ok"
    assert "pgcelery migrate" in body["checks"]["schema"]["detail"]


def test_unreachable_database_fails_fast_naming_the_database() -> None:
    settings = Settings(DATABASE_URL="postgresql://u:hunter2secret@127.0.0.1:1/db")
    probe = DatabaseProbe(settings)
    try:
        report = probe.check()
    finally:
        probe.close()
    assert report.failing == ["database"]
    assert report.checks["schema"].status == "skipped"
    assert "hunter2secret" not in str(report.as_json())
    assert report.duration < 5


def test_queue_stats_count_ready_and_in_flight_messages(app: Celery, settings: Settings) -> None:
    for i in range(3):
        app.send_task("tests.add", (i, i))
    with psycopg.connect(libpq(settings.database_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE kombu_message SET lease_token = gen_random_uuid(),"
            " visible_at = now() + interval '1 minute'"
            " WHERE id = (SELECT min(id) FROM kombu_message)"
        )
    probe = DatabaseProbe(settings)
    try:
        stats = {queue.name: queue for queue in probe.queue_stats()}
    finally:
        probe.close()
    assert stats["celery"].ready == 2
    assert stats["celery"].in_flight == 1
    assert stats["celery"].oldest_ready_age is not None
    assert 0 <= stats["celery"].oldest_ready_age < 60


def test_a_dropped_connection_fails_the_check_and_the_next_one_reconnects(
    settings: Settings,
) -> None:
    probe = DatabaseProbe(settings)
    try:
        assert probe.check().ok
        with psycopg.connect(libpq(settings.database_url), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        dropped = probe.check()
        again = probe.check()
    finally:
        probe.close()
    # The pooled connection was gone: nothing could be checked on it, as when unreachable.
    assert dropped.failing == ["database"]
    assert dropped.checks["database"].detail.startswith("PostgreSQL is unreachable:")
    assert again.ok


def test_poll_only_mode_prepares_no_statements(settings: Settings) -> None:
    # Behind PgBouncer in transaction pooling mode (PGCELERY_LISTEN=false) a statement
    # prepared on one server connection is unknown on the next.
    probe = DatabaseProbe(Settings(DATABASE_URL=settings.database_url, PGCELERY_LISTEN=False))
    try:
        for _ in range(8):  # psycopg prepares after five runs by default
            assert probe.check().ok
            probe.queue_stats()
        with probe.pool.connection() as connection:
            prepared = connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    finally:
        probe.close()
    assert prepared == (0,)
