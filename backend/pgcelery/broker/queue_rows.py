"""Rows of ``kombu_queue`` that belong to one consumer process, and how they are pruned safely.

Every ``celery inspect`` leaves the row of its reply queue (``<oid>.reply.celery.pidbox``), every
event receiver (Flower, ``celery events``) the row of its ``celeryev.<uuid>`` queue, every worker
node the row of its ``<hostname>.celery.pidbox`` queue. Their names are never used again once
that process is gone, so without pruning the table grows with each of them.

The hazard: a channel caches a queue's id. Were a row deleted while a consumer still claimed from
its cached id, the next reply would re-create the row under a new id, and the consumer would
wait on the old one forever. Two rules make that impossible:

* The pruner deletes only rows with an *ephemeral* name (:func:`ephemeral_patterns`) that have
  no message and no row at all in ``pgcelery_binding``. A consumer of such a queue registers
  its binding before it consumes and refreshes it while it does (:mod:`pgcelery.broker.bindings`).
* Whoever is about to use the id of an ephemeral queue (the consumer right after binding it, a
  worker about to reply to it) looks the id up again under a shared advisory lock
  (:func:`resolve_fenced`); the pruner deletes under the exclusive one (:func:`prune_unused`),
  in a statement whose snapshot is taken after it holds it. So a lookup either sees the row
  already gone (and creates a fresh one) or runs entirely before or after the deletion, which
  then sees the binding registered before the lookup and keeps the row.

Both locks are transaction-scoped, so they hold behind PgBouncer in transaction pooling too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import psycopg

from pgcelery.broker.message_sql import MessageSql
from pgcelery.schema.names import Names


def fence_key(schema: str = "public") -> int:
    """The 64-bit advisory lock key that orders id lookups against pruning, per schema."""
    digest = hashlib.blake2b(f"pgcelery.queue_rows:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _like_literal(text: str) -> str:
    """``text`` matched literally by LIKE (its ``%``, ``_`` and ``\\`` escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def ephemeral_patterns(control_exchange: str, event_queue_prefix: str) -> list[str]:
    """LIKE patterns of the queue names only one consumer process ever uses.

    Remote control (pidbox and reply queues, from Celery's ``control_exchange``), event
    receivers (Celery's ``event_queue_prefix``), kombu's ``Broadcast`` queues and anonymous
    queues (``queue_declare()`` with no name).
    """
    return [
        f"%.{_like_literal(control_exchange)}.pidbox",
        f"{_like_literal(event_queue_prefix)}.%",
        "bcast.%",
        "amq.gen-%",
    ]


def resolve_fenced(conn: psycopg.Connection[Any], sql: MessageSql, queue: str) -> int:
    """The id of ``queue``'s row, created if missing, as no concurrent prune can invalidate it.

    ``conn`` must be in autocommit mode: this runs its own short transaction on it.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (fence_key(sql.names.schema),))
        conn.execute(sql.create_queue, (queue, queue))
        # A statement that starts after the lock is held: its snapshot includes any deletion
        # committed by a pruner that held the lock before us.
        row = conn.execute(sql.queue_id, (queue,)).fetchone()
    if row is None:  # unreachable: the row was created above and cannot be pruned meanwhile
        raise LookupError(f"queue {queue!r} has no row")
    return int(row[0])


def prune_unused(
    conn: psycopg.Connection[Any],
    names: Names,
    patterns: Iterable[str],
    keep: Iterable[str],
    limit: int,
) -> int | None:
    """Delete up to ``limit`` rows of ephemeral queues nobody binds and nothing waits in.

    Runs in the caller's open transaction (the lock is released at its end). ``keep`` names
    queues never deleted whatever their name (the app's own task queues). Returns the number
    deleted, or None when a lookup holds the fence right now (try again next time).
    """
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (fence_key(names.schema),))
    got = row.fetchone()
    if not (got and got[0]):
        return None
    cur = conn.execute(
        f"DELETE FROM {names.queue} WHERE id IN (SELECT q.id FROM {names.queue} q"
        " WHERE q.name LIKE ANY(%s) AND q.name <> ALL(%s)"
        f" AND NOT EXISTS (SELECT 1 FROM {names.binding} b WHERE b.queue = q.name)"
        f" AND NOT EXISTS (SELECT 1 FROM {names.message} m WHERE m.queue_id = q.id)"
        " ORDER BY q.id LIMIT %s)",
        (list(patterns), list(keep), limit),
    )
    return cur.rowcount
