"""The workers' pruner, rule by rule, on a real database: what goes, and what stays."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from kombu import Connection, Consumer, Exchange, Producer, Queue

from pgcelery import connections, create_app, dsn
from pgcelery.broker import transport
from pgcelery.scheduling.pruning import (
    PruneConfig,
    Pruner,
    PruneReport,
    prune_lock_key,
    prune_once,
)
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.logs import captured
from tests.support.postgres import libpq
from tests.support.schemas import login_role, url_as
from tests.support.waiting import wait_until
from tests.support.workers import solo_worker

TIMEOUT = 30
REPLY_ROWS = "SELECT name FROM kombu_queue WHERE name LIKE '%.reply.celery.pidbox'"
OLD_RESULT = (
    "INSERT INTO celery_taskmeta (id, task_id, status, date_done)"
    " VALUES (nextval('task_id_sequence'), 'old', 'SUCCESS',"
    " timezone('UTC', now()) - interval '2 days')"
)


def _sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def _column(url: str, query: str) -> set[str]:
    return {str(row[0]) for row in _sql(url, query)}


def _queue(url: str, name: str) -> int:
    rows = _sql(
        url,
        "INSERT INTO kombu_queue (id, name) VALUES (nextval('queue_id_sequence'), %s) RETURNING id",
        (name,),
    )
    return int(rows[0][0])


def _message(url: str, queue_id: int) -> None:
    _sql(
        url,
        "INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id, priority)"
        " VALUES (nextval('message_id_sequence'), true, now(), '{}', 1, %s, 0)",
        (queue_id,),
    )


def _binding(url: str, queue: str, expires_in: str) -> None:
    _sql(
        url,
        "INSERT INTO pgcelery_binding (exchange, queue, routing_key, expires_at)"
        " VALUES ('reply.celery.pidbox', %s, %s, now() + %s::interval)",
        (queue, queue, expires_in),
    )


def _prune(app: Celery) -> PruneReport:
    failures: list[tuple[str, Exception]] = []
    report = prune_once(PruneConfig.of(app), lambda rule, exc: failures.append((rule, exc)))
    assert failures == []
    assert report.complete
    return report


def test_expired_results_go_in_batches_and_fresh_ones_stay(app: Celery, database_url: str) -> None:
    _sql(
        database_url,
        """
        INSERT INTO celery_taskmeta (id, task_id, status, date_done)
        SELECT nextval('task_id_sequence'), 'old-' || g, 'SUCCESS',
               timezone('UTC', now()) - interval '2 days'
        FROM generate_series(1, 2500) g;
        INSERT INTO celery_taskmeta (id, task_id, status, date_done)
        VALUES (nextval('task_id_sequence'), 'fresh', 'SUCCESS', timezone('UTC', now()));
        INSERT INTO celery_tasksetmeta (id, taskset_id, date_done)
        SELECT nextval('taskset_id_sequence'), 'old-group-' || g,
               timezone('UTC', now()) - interval '2 days'
        FROM generate_series(1, 3) g;
        INSERT INTO celery_tasksetmeta (id, taskset_id, date_done)
        VALUES (nextval('taskset_id_sequence'), 'fresh-group', timezone('UTC', now()));
        """,
    )
    report = _prune(app)
    assert (report.counts["tasks"], report.counts["groups"]) == (2500, 3)
    assert _column(database_url, "SELECT task_id FROM celery_taskmeta") == {"fresh"}
    assert _column(database_url, "SELECT taskset_id FROM celery_tasksetmeta") == {"fresh-group"}


def test_unused_ephemeral_queue_rows_go_with_expired_bindings(
    app: Celery, database_url: str
) -> None:
    app.amqp.queues.select_add("celeryev.audit")  # a task queue with an event-like name
    unused = [
        "gone.reply.celery.pidbox",
        "dead@host.celery.pidbox",
        "celeryev.6b0c4b52",
        "bcast.5d1e",
        "amq.gen-9f2a",
    ]
    for name in unused:
        _queue(database_url, name)
    expired = _queue(database_url, "expired.reply.celery.pidbox")
    _binding(database_url, "expired.reply.celery.pidbox", "-1 minute")
    _message(database_url, expired)  # a late reply nobody will read
    _queue(database_url, "live.reply.celery.pidbox")
    _binding(database_url, "live.reply.celery.pidbox", "30 seconds")
    _message(database_url, _queue(database_url, "waiting.reply.celery.pidbox"))
    for name in ("celery", "reports", "celeryev.audit"):
        _queue(database_url, name)

    report = _prune(app)

    assert report.counts["bindings"] == 1
    assert report.counts["queues"] == len(unused) + 1
    assert _column(database_url, "SELECT name FROM kombu_queue") == {
        "live.reply.celery.pidbox",
        "waiting.reply.celery.pidbox",
        "celery",
        "reports",
        "celeryev.audit",
    }
    assert _column(database_url, "SELECT queue FROM pgcelery_binding") == {
        "live.reply.celery.pidbox"
    }
    assert _sql(database_url, "SELECT count(*) FROM kombu_message") == [(1,)]


def test_a_reply_queue_pruned_between_two_inspects_is_made_again(
    app: Celery, worker: TestWorkController, database_url: str
) -> None:
    pong = [{worker.hostname: {"ok": "pong"}}]
    with app.connection_for_write() as conn:
        # One bound mailbox: one reply queue name, on one channel, which caches the queue's id.
        mailbox = app.control.mailbox(conn)
        assert mailbox.multi_call("ping", timeout=10, limit=1) == pong
        # kombu deleted the reply queue's binding after collecting: its row is now unused.
        assert _column(database_url, REPLY_ROWS) == {mailbox.reply_queue.name}
        assert _prune(app).counts["queues"] == 1
        assert _column(database_url, REPLY_ROWS) == set()
        pidbox = f"{worker.hostname}.celery.pidbox"
        assert pidbox in _column(database_url, "SELECT name FROM kombu_queue"), "a live worker's"
        # The worker replies into a new row; the client must claim from that one, not the cached.
        assert mailbox.multi_call("ping", timeout=10, limit=1) == pong
        assert _column(database_url, REPLY_ROWS) == {mailbox.reply_queue.name}


def test_a_live_event_receivers_queue_stays_and_still_receives(
    app: Celery, database_url: str
) -> None:
    transport.install()
    events = Exchange("celeryev", type="topic", durable=False)
    received: list[Any] = []
    with Connection(dsn.broker_url(database_url)) as conn:
        queue = Queue("celeryev.live", events, routing_key="#", auto_delete=True, durable=False)
        Consumer(
            conn.channel(), [queue], no_ack=True, callbacks=[lambda b, m: received.append(b)]
        ).consume()
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.1)
        _prune(app)
        assert "celeryev.live" in _column(database_url, "SELECT name FROM kombu_queue")
        with Connection(dsn.broker_url(database_url)) as publisher:
            Producer(publisher.channel()).publish(
                {"type": "worker-heartbeat"},
                exchange=events,
                routing_key="worker.heartbeat",
                declare=[events],
            )

        def delivered() -> bool:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.1)
            return bool(received)

        wait_until(delivered, timeout=TIMEOUT, what="the event after the prune")
    assert received == [{"type": "worker-heartbeat"}]


def test_dead_worker_rows_go_and_live_ones_stay(
    app: Celery, worker: TestWorkController, database_url: str
) -> None:
    wait_until(
        lambda: _column(database_url, "SELECT hostname FROM pgcelery_worker"),
        timeout=TIMEOUT,
        what="the live worker's heartbeat row",
    )
    _sql(
        database_url,
        "INSERT INTO pgcelery_worker (hostname, pid, pool, concurrency, last_seen) VALUES"
        " ('killed@host', 1, 'solo', 1, now() - interval '1 hour'),"
        # Not seen for 40 s: fewer than 10 heartbeat intervals (5 s), may still come back.
        " ('paused@host', 2, 'solo', 1, now() - interval '40 seconds')",
    )
    assert _prune(app).counts["workers"] == 1
    assert _column(database_url, "SELECT hostname FROM pgcelery_worker") == {
        worker.hostname,
        "paused@host",
    }


def test_removed_beat_entries_go_after_the_retention(app: Celery, database_url: str) -> None:
    assert "pgcelery.prune_results" in app.conf.beat_schedule
    _sql(
        database_url,
        "INSERT INTO pgcelery_beat (name, task, last_run_at) VALUES"
        " ('pgcelery.prune_results', 'maintenance.prune_results', now() - interval '400 days'),"
        " ('removed.long.ago', 'tests.add', now() - interval '31 days'),"
        " ('removed.yesterday', 'tests.add', now() - interval '1 day')",
    )
    assert _prune(app).counts["beat_entries"] == 1
    assert _column(database_url, "SELECT name FROM pgcelery_beat") == {
        "pgcelery.prune_results",
        "removed.yesterday",
    }


def test_broadcasts_beyond_the_age_and_row_limits_go(app: Celery, database_url: str) -> None:
    insert = (
        "INSERT INTO pgcelery_broadcast (exchange, payload, created_at)"
        " SELECT 'celery.pidbox', 'old-' || g, now() - interval '1 hour'"
        " FROM generate_series(1, 3) g"
    )
    _sql(database_url, insert)
    _sql(
        database_url,
        "INSERT INTO pgcelery_broadcast (exchange, payload)"
        " SELECT 'celery.pidbox', 'new-' || g FROM generate_series(1, 25) g",
    )
    assert _prune(app).counts["broadcasts"] == 3
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "broadcast_max_rows": 10,
    }
    assert _prune(app).counts["broadcasts"] == 15
    assert _column(database_url, "SELECT payload FROM pgcelery_broadcast") == {
        f"new-{n}" for n in range(16, 26)
    }


def test_a_pass_yields_to_a_worker_already_pruning(app: Celery, database_url: str) -> None:
    _sql(database_url, OLD_RESULT)
    with psycopg.connect(libpq(database_url), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (prune_lock_key(),))
        report = prune_once(PruneConfig.of(app), lambda rule, exc: None)
        assert not report.complete
        assert report.deleted == 0
        assert _column(database_url, "SELECT task_id FROM celery_taskmeta") == {"old"}
        # Released here, not by closing: the server ends a closed session a moment later.
        other.execute("SELECT pg_advisory_unlock(%s)", (prune_lock_key(),))
    assert _prune(app).counts["tasks"] == 1


@pytest.fixture
def app_role_url(pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(owner URL, app-role URL) of a database migrated with the app role present."""
    with login_role(pg_admin_url) as role:
        name = postgres.unique_name("pgc_p")
        owner_url = postgres.create_database(pg_admin_url, name)
        role_url = url_as(owner_url, role)
        try:
            monkeypatch.setenv("PGCELERY_APP_ROLE", role)
            migrations.upgrade(owner_url)
            yield owner_url, role_url
        finally:
            connections.reset(dsn.libpq_url(dsn.sync_url(role_url)))
            postgres.drop_database(pg_admin_url, name)


def test_the_app_role_may_run_every_rule(app_role_url: tuple[str, str]) -> None:
    owner_url, role_url = app_role_url
    _queue(owner_url, "gone.reply.celery.pidbox")
    _sql(
        owner_url,
        OLD_RESULT + ";"
        " INSERT INTO pgcelery_worker (hostname, pid, pool, concurrency, last_seen)"
        " VALUES ('killed@host', 1, 'solo', 1, now() - interval '1 hour');"
        " INSERT INTO pgcelery_beat (name, task, last_run_at)"
        " VALUES ('removed', 'tests.add', now() - interval '31 days')",
    )
    app = create_app(
        "pgcelery-role-test", settings=Settings(DATABASE_URL=role_url, metrics_enabled=False)
    )
    failures: list[tuple[str, str]] = []
    try:
        report = prune_once(
            PruneConfig.of(app), lambda rule, exc: failures.append((rule, type(exc).__name__))
        )
    finally:
        app.close()
    # Revision 0008 grants the app role DELETE on kombu_queue and pgcelery_beat.
    assert failures == []
    assert report.failed == {}
    counts = report.counts
    assert (counts["tasks"], counts["workers"], counts["queues"], counts["beat_entries"]) == (
        1,
        1,
        1,
        1,
    )


def test_a_worker_prunes_on_its_own_every_interval(database_url: str) -> None:
    _sql(database_url, OLD_RESULT)
    settings = Settings(DATABASE_URL=database_url, metrics_enabled=False, prune_interval=0.2)
    app = create_app("pgcelery-pruning-test", include=["tests.support.tasks"], settings=settings)
    try:
        with ExitStack() as stack:
            stack.enter_context(solo_worker(app))
            wait_until(
                lambda: not _column(database_url, "SELECT task_id FROM celery_taskmeta"),
                timeout=TIMEOUT,
                what="the worker's pruner to delete the expired result",
            )
            assert app.send_task("tests.add", (2, 3)).get(timeout=TIMEOUT) == 5
    finally:
        app.close()


def test_a_pass_against_an_unreachable_database_is_logged_once_not_raised() -> None:
    settings = Settings(
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        metrics_enabled=False,
        prune_interval=0.5,
    )
    app = create_app("pgcelery-test", settings=settings)
    pruner = Pruner(app, "unreachable@test")
    conninfo = PruneConfig.of(app).conninfo
    with captured("pgcelery.scheduling.pruning") as records:
        try:
            assert pruner.run_once() is None
            assert pruner.run_once() is None
        finally:
            app.close()
            connections.reset(conninfo)
    failures = [r for r in records if r.getMessage() == "pgcelery.prune.failed"]
    assert len(failures) == 1, "an outage is logged once, not at every pass"
    assert "nobody" not in failures[0].__dict__.get("error", "")


def test_fired_chords_go_after_an_hour_and_abandoned_ones_with_their_results(
    app: Celery, database_url: str
) -> None:
    chord = "INSERT INTO pgcelery_chord (group_id, header, size, done, created_at, fired_at)"
    _sql(
        database_url,
        f"{chord} VALUES ('fired-old', '[]', 1, 1, now() - interval '2 hours',"
        " now() - interval '2 hours'), ('fired-new', '[]', 1, 1, now(), now()),"
        " ('abandoned', '[]', 2, 1, now() - interval '2 days', NULL),"
        " ('waiting', '[]', 2, 1, now() - interval '2 hours', NULL)",
    )
    part = "INSERT INTO pgcelery_chord_part (group_id, task_id) VALUES (%s, %s)"
    for group_id in ("fired-old", "abandoned", "waiting"):
        _sql(database_url, part, (group_id, f"{group_id}-part"))
    report = _prune(app)
    assert report.counts["chords"] == 2
    assert _column(database_url, "SELECT group_id FROM pgcelery_chord") == {"fired-new", "waiting"}
    assert _column(database_url, "SELECT group_id FROM pgcelery_chord_part") == {"waiting"}


def test_unique_holds_that_ran_out_go(app: Celery, database_url: str) -> None:
    _sql(
        database_url,
        "INSERT INTO pgcelery_unique_hold (unique_task, unique_key, task_id, held_until) VALUES"
        " ('tests.add', 'over', 'a', now() - interval '1 second'),"
        " ('tests.add', 'held', 'b', now() + interval '1 hour'),"
        " ('tests.add', 'left-unrun', 'c', NULL)",  # its message was revoked or purged
    )
    assert _prune(app).counts["unique_holds"] == 2
    assert _column(database_url, "SELECT unique_key FROM pgcelery_unique_hold") == {"held"}
