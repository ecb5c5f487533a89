"""Bulk enqueue: a group, ``send_many`` and tasks sent inside one ``producer_or_acquire`` block
are inserted with one statement on one commit, also inside the caller's transaction, and a
batch whose connection drops is sent once when retried."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from celery import Celery, group

from pgcelery import send_in_transaction, send_many
from pgcelery.broker import channel as channel_module
from tests.support.postgres import libpq, scalar
from tests.support.workers import solo_worker

MESSAGES = "SELECT count(*) FROM kombu_message"
TRANSACTIONS = "SELECT count(DISTINCT xmin::text) FROM kombu_message"


@pytest.fixture
def inserts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of rows of each INSERT statement the broker's channels run."""
    sizes: list[int] = []
    original = channel_module.Channel._put_rows

    def counting(self: Any, rows: list[Any]) -> None:
        sizes.append(len(rows))
        original(self, rows)

    monkeypatch.setattr(channel_module.Channel, "_put_rows", counting)
    return sizes


def test_a_group_is_sent_with_one_insert_on_one_commit(
    app: Celery, database_url: str, inserts: list[int]
) -> None:
    results = group(app.signature("tests.add", args=(i, i)) for i in range(200)).apply_async()
    assert inserts == [200]
    assert scalar(database_url, MESSAGES) == 200
    assert scalar(database_url, TRANSACTIONS) == 1
    with solo_worker(app):
        assert results.get(timeout=60) == [2 * i for i in range(200)]


def test_send_many_returns_results_in_order(
    app: Celery, database_url: str, inserts: list[int]
) -> None:
    signatures = [app.signature("tests.add", args=(i, 1)) for i in range(50)]
    results = send_many(signatures, countdown=0)
    assert inserts == [50]
    assert send_many([]) == []
    with solo_worker(app):
        assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(50)]


def test_a_single_send_is_one_row_as_before(app: Celery, inserts: list[int]) -> None:
    app.signature("tests.add", args=(1, 1)).apply_async()
    app.send_task("tests.add", args=(2, 2))
    assert inserts == [1, 1]


def test_a_group_sent_in_the_callers_transaction_commits_or_rolls_back_with_it(
    app: Celery, database_url: str, inserts: list[int]
) -> None:
    members = [app.signature("tests.add", args=(i, 0)) for i in range(20)]
    with psycopg.connect(libpq(database_url)) as conn:
        send_in_transaction(conn, group(members))
        send_in_transaction(conn, group(members))
        conn.rollback()
    assert scalar(database_url, MESSAGES) == 0
    with psycopg.connect(libpq(database_url)) as conn:
        send_in_transaction(conn, group(members))
        caller = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        conn.commit()
    assert inserts == [20, 20, 20]
    assert scalar(database_url, MESSAGES) == 20
    with psycopg.connect(libpq(database_url)) as conn:
        found = conn.execute("SELECT DISTINCT xmin::text FROM kombu_message").fetchall()
    assert caller is not None
    assert found == [(caller[0],)]


def test_a_batch_whose_connection_was_dropped_is_sent_once(app: Celery, database_url: str) -> None:
    app.send_task("tests.add", args=(0, 0))  # the producer's connection is open now
    with app.producer_or_acquire() as producer:
        for i in range(10):
            app.send_task("tests.add", args=(i, 0), producer=producer)
        assert scalar(database_url, MESSAGES) == 1  # still collected in memory
        with psycopg.connect(libpq(database_url), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ).fetchone()
        assert killed is not None
        assert killed[0] >= 1
    assert scalar(database_url, MESSAGES) == 11


def _send_five_then_fail(app: Celery) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(5):
            app.send_task("tests.add", args=(i, 0), producer=producer)
        raise RuntimeError("the caller changed its mind")


def test_a_block_that_raises_sends_nothing(app: Celery, database_url: str) -> None:
    with pytest.raises(RuntimeError):
        _send_five_then_fail(app)
    assert scalar(database_url, MESSAGES) == 0


def test_scheduled_members_of_a_batch_wait_for_their_eta(app: Celery, database_url: str) -> None:
    send_many([app.signature("tests.add", args=(i, 0)) for i in range(3)], countdown=3600)
    group(app.signature("tests.add", args=(1, 1)) for _ in range(2)).apply_async()
    later = "SELECT count(*) FROM kombu_message WHERE visible_at > now() + interval '50 minutes'"
    assert scalar(database_url, later) == 3
    assert scalar(database_url, "SELECT count(*) FROM kombu_message WHERE visible_at <= now()") == 2
