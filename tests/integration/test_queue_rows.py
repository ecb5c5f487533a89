"""The fence between queue id lookups and the pruning of queue rows, with two real sessions."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from kombu import Connection, Consumer, Exchange, Producer, Queue

from pgcelery import dsn
from pgcelery.broker import transport
from pgcelery.broker.message_sql import MessageSql
from pgcelery.broker.queue_rows import ephemeral_patterns, fence_key, prune_unused, resolve_fenced
from pgcelery.schema.names import Names
from tests.support.postgres import libpq, scalar
from tests.support.waiting import wait_until

NAMES = Names()
PATTERNS = ephemeral_patterns("celery", "celeryev")
REPLY = "a1b2.reply.celery.pidbox"


def _queue_id(url: str, name: str) -> int | None:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT id FROM kombu_queue WHERE name = %s", (name,)).fetchone()
    return int(row[0]) if row else None


def _create(url: str, name: str) -> int:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        return resolve_fenced(conn, MessageSql(NAMES), name)


def _advisory_waiters(url: str) -> int:
    return scalar(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")


def test_a_lookup_during_a_prune_waits_and_gets_a_row_that_exists(database_url: str) -> None:
    old = _create(database_url, REPLY)
    found: dict[str, int] = {}
    with psycopg.connect(libpq(database_url)) as pruner:  # one open transaction
        assert prune_unused(pruner, NAMES, PATTERNS, ["celery"], 10) == 1
        lookup = threading.Thread(target=lambda: found.update(id=_create(database_url, REPLY)))
        lookup.start()
        wait_until(
            lambda: _advisory_waiters(database_url) == 1,
            timeout=30,
            what="the lookup to wait for the fence",
        )
        assert "id" not in found  # it would have read the row being deleted
        pruner.commit()
    lookup.join(timeout=30)
    assert found["id"] != old
    assert _queue_id(database_url, REPLY) == found["id"]


def test_a_prune_skips_queue_rows_while_a_lookup_holds_the_fence(database_url: str) -> None:
    _create(database_url, REPLY)
    with psycopg.connect(libpq(database_url), autocommit=True) as lookup:
        lookup.execute("SELECT pg_advisory_lock_shared(%s)", (fence_key(),))
        with psycopg.connect(libpq(database_url)) as pruner:
            assert prune_unused(pruner, NAMES, PATTERNS, [], 10) is None
            pruner.commit()
        assert _queue_id(database_url, REPLY) is not None
        lookup.execute("SELECT pg_advisory_unlock_shared(%s)", (fence_key(),))
    with psycopg.connect(libpq(database_url)) as pruner:
        assert prune_unused(pruner, NAMES, PATTERNS, [], 10) == 1
    assert _queue_id(database_url, REPLY) is None


def test_a_message_to_a_queue_whose_row_is_gone_is_dropped(database_url: str) -> None:
    transport.install()
    reply = Exchange("reply.celery.pidbox", type="direct", durable=False)
    with Connection(dsn.broker_url(database_url)) as conn:
        channel: Any = conn.channel()
        queue = Queue(REPLY, reply, routing_key="a1b2", auto_delete=True)
        Consumer(channel, [queue], no_ack=True).consume()  # caches the queue's id
        with psycopg.connect(libpq(database_url), autocommit=True) as other:
            other.execute("DELETE FROM pgcelery_binding")
            other.execute("DELETE FROM kombu_queue WHERE name = %s", (REPLY,))
        # The channel still routes to its own queue, by the id it cached.
        Producer(channel).publish({"late": True}, exchange=reply, routing_key="a1b2")
    assert scalar(database_url, "SELECT count(*) FROM kombu_message") == 0
