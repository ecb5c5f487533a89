"""Dead letters: a message delivered too often without an ack leaves the queue.

A task that kills its worker (a segfault, the OOM killer, ``os._exit``) is never acked: its
lease runs out and it comes back, for ever, taking a worker down each time. Each claim counts a
delivery (``kombu_message.deliveries``; a message handed back unstarted is not counted). A
claim that finds a message already delivered ``max_deliveries`` times moves it, fenced by the
lease it just took, to ``pgcelery_dead_letter`` instead of running it, and tells whoever
registered with :func:`on_dead_letter` (the app factory marks the task FAILURE). Operators list,
replay and purge dead letters with ``pgcelery dead-letters``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgcelery.broker import limits
from pgcelery.schema.names import Names

log = logging.getLogger(__name__)

REASON = "delivery limit"
#: Why a message whose payload is not JSON is buried at once: no worker could ever run it.
UNREADABLE = "unreadable payload"
#: Why a message over PGCELERY_MAX_MESSAGE_BYTES is buried unread (pgcelery.broker.limits).
OVERSIZED = "oversized payload"


@dataclass(frozen=True)
class DeadLetter:
    id: int
    queue: str
    task_id: str | None
    task_name: str | None
    deliveries: int
    last_worker: str | None
    reason: str


Listener = Callable[[DeadLetter], None]
_LISTENERS: dict[str, Listener] = {}
_LOCK = threading.Lock()


def claimant() -> str:
    """Who claims: this worker process, as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def on_dead_letter(conninfo: str, listener: Listener) -> None:
    """Call ``listener`` in this process for each message buried from database ``conninfo``
    (one listener per database: the last app created for it)."""
    with _LOCK:
        _LISTENERS[conninfo] = listener


def _announce(conninfo: str, letter: DeadLetter) -> None:
    log.warning(
        "pgcelery.broker.dead_lettered",
        extra={
            "reason": letter.reason,
            "message_id": letter.id,
            "queue": letter.queue,
            "task_id": letter.task_id,
            "task_name": letter.task_name,
            "deliveries": letter.deliveries,
            "last_worker": letter.last_worker,
        },
    )
    with _LOCK:
        listener = _LISTENERS.get(conninfo)
    if listener is None:
        return
    try:
        listener(letter)
    except Exception:  # the message is buried either way; its result is best effort
        log.exception("pgcelery.broker.dead_letter_listener_failed")


def _header(payload: dict[str, Any] | None, name: str) -> str | None:
    headers = payload.get("headers") if isinstance(payload, dict) else None
    value = headers.get(name) if isinstance(headers, dict) else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Refused:
    """A message a claim took but will not deliver, and why."""

    id: int
    token: str
    queue: str
    #: The stored payload; None when it was too large to be read (it moves inside the database).
    raw: str | None
    #: The decoded payload; None when it could not be decoded.
    payload: dict[str, Any] | None
    priority: int
    #: Deliveries before this claim.
    deliveries: int
    previous_claimant: str | None
    reason: str = REASON


def bury(
    db: psycopg.Connection[Any], names: Names, conninfo: str, refused: Sequence[Refused]
) -> None:
    """Move claimed messages to the dead letters, each in its own transaction. Fenced by the
    lease the claim took: a message whose lease was lost meanwhile is left where it is."""
    for item in refused:
        if item.raw is None:
            _bury_unread(db, names, conninfo, item)
            continue
        letter = DeadLetter(
            item.id,
            item.queue,
            _header(item.payload, "id"),
            _header(item.payload, "task"),
            item.deliveries,
            item.previous_claimant,
            item.reason,
        )
        with db.transaction():
            moved = db.execute(
                f"DELETE FROM {names.message} WHERE id = %s AND lease_token = %s",
                (item.id, item.token),
            ).rowcount
            if moved:
                db.execute(
                    f"INSERT INTO {names.dead_letter} (id, queue, payload, priority, deliveries,"
                    " task_id, task_name, last_worker, reason)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (
                        item.id,
                        item.queue,
                        item.raw,
                        item.priority,
                        letter.deliveries,
                        letter.task_id,
                        letter.task_name,
                        letter.last_worker,
                        item.reason,
                    ),
                )
        if moved:
            _announce(conninfo, letter)


def _bury_unread(db: psycopg.Connection[Any], names: Names, conninfo: str, item: Refused) -> None:
    """Move a message too large to read into the dead letters without reading it: the task id
    and name are found in the text by the database (the body before them is base64)."""
    with db.transaction():
        row = db.execute(
            f"WITH d AS (DELETE FROM {names.message} WHERE id = %s AND lease_token = %s"
            "  RETURNING payload)"
            f" INSERT INTO {names.dead_letter} (id, queue, payload, priority, deliveries,"
            "  task_id, task_name, last_worker, reason)"
            ' SELECT %s, %s, d.payload, %s, %s, substring(d.payload from \'"id": ?"([^"]+)"\'),'
            '  substring(d.payload from \'"task": ?"([^"]+)"\'), %s, %s FROM d'
            " ON CONFLICT (id) DO NOTHING RETURNING task_id, task_name",
            (
                item.id,
                item.token,
                item.id,
                item.queue,
                item.priority,
                item.deliveries,
                item.previous_claimant,
                item.reason,
            ),
        ).fetchone()
    if row is not None:
        letter = DeadLetter(
            item.id,
            item.queue,
            row[0],
            row[1],
            item.deliveries,
            item.previous_claimant,
            item.reason,
        )
        _announce(conninfo, letter)


# -- operations (``pgcelery dead-letters``, the dashboard) ------------------------------------

LISTED = ("id", "queue", "task_name", "task_id", "deliveries", "last_worker", "reason", "dead_at")


def listed(db: psycopg.Connection[Any], names: Names, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters first, without their payloads."""
    rows = db.execute(
        f"SELECT {', '.join(LISTED)} FROM {names.dead_letter}"
        " ORDER BY dead_at DESC, id DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [dict(zip(LISTED, row, strict=True)) for row in rows]


def replay(db: psycopg.Connection[Any], names: Names, ids: Sequence[int] | None) -> list[int]:
    """Put dead letters back on their queues (``ids``, or all of them with None), with a fresh
    delivery count, in one transaction; returns the ids replayed. Their tasks' FAILURE results
    are removed, so a caller waiting on one waits for the new run instead."""
    chosen = "true" if ids is None else "id = ANY(%(ids)s)"
    params = {"ids": list(ids or ()), "limited": f'"{limits.LIMIT_HEADER}"'}
    with db.transaction():
        # A queue row pruned since (an idle queue) is made again, or the message would be lost.
        db.execute(
            f"INSERT INTO {names.queue} (id, name)"
            f" SELECT nextval('{names.sequence('queue_id_sequence')}'), d.queue"
            f" FROM (SELECT DISTINCT queue FROM {names.dead_letter} WHERE {chosen}) d"
            f" WHERE NOT EXISTS (SELECT 1 FROM {names.queue} q WHERE q.name = d.queue)"
            " ON CONFLICT (name) DO NOTHING",
            params,
        )
        rows = db.execute(
            f"WITH d AS (DELETE FROM {names.dead_letter} WHERE {chosen}"
            "  RETURNING id, queue, payload, priority, task_id),"
            f" r AS (DELETE FROM {names.task} t USING d"
            "  WHERE t.task_id = d.task_id AND t.status = 'FAILURE'),"
            f" m AS (INSERT INTO {names.message}"
            "  (id, visible, timestamp, payload, version, queue_id, priority, visible_at,"
            "   tenant_id)"
            f"  SELECT nextval('{names.sequence('message_id_sequence')}'), true,"
            "   now() AT TIME ZONE 'UTC', d.payload, 1, q.id, d.priority, now(),"
            # The tenant column as the publisher filled it (pgcelery.broker.limits.tenant_of).
            '   substring(d.payload from \'"pgcelery_tenant_id": ?"([^"]+)"\')'
            f"  FROM d JOIN {names.queue} q ON q.name = d.queue"
            "  RETURNING id, payload)"
            " SELECT id, NULL::bigint, NULL FROM d"
            " UNION ALL SELECT NULL, m.id, m.payload FROM m"
            " WHERE strpos(m.payload, %(limited)s) > 0"
            " ORDER BY 1",
            params,
        ).fetchall()
        _restore_limits(db, names, [(row[1], row[2]) for row in rows if row[0] is None])
    replayed = [int(row[0]) for row in rows if row[0] is not None]
    if replayed:
        log.info("pgcelery.dead_letters.replayed", extra={"count": len(replayed)})
    return replayed


def _restore_limits(
    db: psycopg.Connection[Any], names: Names, messages: list[tuple[int, str]]
) -> None:
    """Give replayed messages of limited tasks their limit columns back (in the replay's
    transaction, so no claim ever sees them unlimited)."""
    for message_id, payload in messages:
        try:
            message = json.loads(payload)
        except ValueError:
            continue
        columns = limits.limit_columns(message) if isinstance(message, dict) else limits.UNLIMITED
        if columns != limits.UNLIMITED:
            db.execute(
                f"UPDATE {names.message} SET concurrency_key = %s, concurrency_limit = %s,"
                " rate_key = %s, rate_interval = %s, limit_task = %s WHERE id = %s",
                (*columns, message_id),
            )


def purge(
    db: psycopg.Connection[Any],
    names: Names,
    ids: Sequence[int] | None = None,
    older_than: float | None = None,
) -> int:
    """Delete dead letters by id, or those buried more than ``older_than`` seconds ago."""
    if ids is not None:
        cur = db.execute(f"DELETE FROM {names.dead_letter} WHERE id = ANY(%s)", (list(ids),))
    elif older_than is not None:
        cur = db.execute(
            f"DELETE FROM {names.dead_letter} WHERE dead_at < now() - make_interval(secs => %s)",
            (older_than,),
        )
    else:
        raise ValueError("purge needs ids or older_than")
    return cur.rowcount
