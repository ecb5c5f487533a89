"""Durable revoke: a task that has not started loses its message in the revoking transaction,
so no worker, started before or after, ever runs it."""

from __future__ import annotations

import psycopg
from celery import Celery

from tests.support import postgres
from tests.support.broker_tasks import record_run
from tests.support.waiting import wait_until
from tests.support.workers import solo_worker


def _message_count(url: str) -> int:
    with psycopg.connect(postgres.libpq(url), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM kombu_message").fetchone()
        return int(row[0]) if row else 0


def _runs(url: str, label: str) -> list[str]:
    with psycopg.connect(postgres.libpq(url), autocommit=True) as conn:
        rows = conn.execute("SELECT task_id FROM test_runs WHERE label = %s", (label,))
        return [r[0] for r in rows]


def test_revoke_deletes_a_scheduled_message_and_records_revoked(
    runs_db: str, runs_app: Celery
) -> None:
    later = record_run.apply_async(("later",), countdown=3600)
    pending = record_run.apply_async(("pending",))
    assert _message_count(runs_db) == 2
    later.revoke()
    runs_app.control.revoke(pending.id)
    assert _message_count(runs_db) == 0
    assert later.state == "REVOKED"
    assert pending.state == "REVOKED"
    # A worker started after the revoke (Celery's in-memory revokes are not its) runs a new task
    # and never the revoked ones.
    with solo_worker(runs_app):
        assert record_run.delay("after").get(timeout=60) == "after"
    assert _runs(runs_db, "later") == []
    assert _runs(runs_db, "pending") == []
    assert later.state == "REVOKED"


def test_revoke_leaves_finished_results_alone(runs_db: str, runs_app: Celery) -> None:
    with solo_worker(runs_app):
        done = record_run.delay("done")
        assert done.get(timeout=60) == "done"
        done.revoke()
        assert done.state == "SUCCESS"


def test_revoke_of_unknown_ids_is_harmless(runs_db: str, runs_app: Celery) -> None:
    kept = record_run.apply_async(("kept",), countdown=3600)
    runs_app.control.revoke(["no-such-task", ""])
    assert _message_count(runs_db) == 1
    assert kept.state == "PENDING"


def test_a_message_held_by_a_dead_worker_is_skipped_by_the_next(
    runs_db: str, runs_app: Celery
) -> None:
    held = record_run.apply_async(("held",))
    # As if a worker claimed it into its prefetch buffer, then died before the broadcast.
    with psycopg.connect(postgres.libpq(runs_db), autocommit=True) as conn:
        conn.execute(
            "UPDATE kombu_message SET lease_token = gen_random_uuid(), deliveries = 1,"
            " visible_at = now() + interval '2 seconds'"
        )
    held.revoke()
    assert _message_count(runs_db) == 1  # held: left to the workers, but marked
    with solo_worker(runs_app):
        # Its lease runs out, the next worker claims it and skips it.
        wait_until(lambda: held.state == "REVOKED", timeout=60, what="REVOKED")
        wait_until(lambda: _message_count(runs_db) == 0, timeout=60, what="the ack")
        assert record_run.delay("after").get(timeout=60) == "after"
    assert _runs(runs_db, "held") == []


def test_celery_control_revoke_goes_through_the_same_path(runs_db: str, runs_app: Celery) -> None:
    # ``celery control revoke ID`` (and Flower) call broadcast("revoke", ...) directly.
    later = record_run.apply_async(("cli",), countdown=3600)
    runs_app.control.broadcast("revoke", arguments={"task_id": later.id, "terminate": False})
    assert _message_count(runs_db) == 0
    assert later.state == "REVOKED"
