"""Unique tasks at the database: one message per (task name, key) at a time.

The producer side (:mod:`pgcelery.tasks.unique`) turns ``unique_key=`` into a
:class:`UniqueSend` and sets it for the duration of one publish; the channel's ``_put`` then
calls :func:`publish_unique` instead of its plain ``INSERT``. A partial unique index on
``kombu_message (unique_task, unique_key)`` (revision 0009) decides, so the rule holds across
processes and inside a caller's transaction (a rolled-back send frees the key). A message stays
in the table while pending, scheduled or running (pgcelery acks late), so the key is taken for
all three. ``unique_for`` keeps it taken for that many seconds after the task ran: such a send
also records the key in ``pgcelery_unique_hold`` and marks its message (header
:data:`HOLD_HEADER`); the worker sets the hold's end as the task finishes, before the ack
deletes the message (:func:`finish_hold`), so at every moment either the message or the hold
takes the key. Messages without a key pay nothing: no trigger, no extra column to fill.

A send that finds the key taken inserts nothing and reports the first task's id in
:attr:`UniqueSend.existing_id`. In ``replace`` mode, a duplicate that no worker holds yet gets
the new arguments, ETA and priority instead, keeping its task id (a debounce).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import psycopg
from kombu.utils.json import dumps, loads

from pgcelery.broker import limits
from pgcelery.broker.caller_transaction import caller_connection, check_same_database
from pgcelery.broker.delivery import due_at
from pgcelery.schema.names import Names

Mode = Literal["keep", "replace"]
MODES: tuple[str, ...] = ("keep", "replace")
#: The header of a message sent with ``unique_for``: [task name, key, seconds].
HOLD_HEADER = "pgcelery_unique_for"
#: Attempts when the duplicate vanishes between the insert and the look-up (it just finished).
_ATTEMPTS = 5


@dataclass
class UniqueSend:
    """One unique publish: its task name and key, and what happened."""

    task: str
    key: str
    unique_for: float | None = None
    mode: Mode = "keep"
    #: Set by the broker when the key was taken: the first task's id (no message was added).
    existing_id: str | None = field(default=None)
    #: True when ``replace`` rewrote the pending duplicate.
    replaced: bool = False


_CURRENT: contextvars.ContextVar[UniqueSend | None] = contextvars.ContextVar(
    "pgcelery_unique_send", default=None
)


@contextmanager
def sending(request: UniqueSend) -> Iterator[UniqueSend]:
    """Make the next message published on this thread a unique one."""
    token = _CURRENT.set(request)
    try:
        yield request
    finally:
        _CURRENT.reset(token)


def take() -> UniqueSend | None:
    """The unique request for the message being published now, if any.

    Not cleared once used: kombu may publish again after a connection error, and the retry must
    be unique too (it finds its own first attempt, if that committed, and reports its id).
    """
    return _CURRENT.get()


@dataclass(frozen=True)
class UniqueSql:
    names: Names

    @cached_property
    def put(self) -> str:
        """Params: payload, queue id, priority, due time, tenant id, task, key, then the limit
        columns (:class:`~pgcelery.broker.limits.LimitColumns`)."""
        return (
            f"INSERT INTO {self.names.message}"
            " (id, visible, timestamp, payload, version, queue_id, priority, visible_at,"
            " tenant_id, unique_task, unique_key, concurrency_key, concurrency_limit, rate_key,"
            " rate_interval, limit_task)"
            f" VALUES (nextval('{self.names.sequence('message_id_sequence')}'),"
            " true, now() AT TIME ZONE 'UTC', %s, 1, %s, %s,"
            " greatest(now(), coalesce(%s::timestamptz, now())), %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (unique_task, unique_key) WHERE unique_key IS NOT NULL DO NOTHING"
            " RETURNING id"
        )

    @cached_property
    def held(self) -> str:
        """Params: task, key. The task id a finished task's hold keeps the key for."""
        return (
            f"SELECT task_id FROM {self.names.unique_hold}"
            " WHERE unique_task = %s AND unique_key = %s AND held_until > now()"
        )

    @cached_property
    def hold(self) -> str:
        """Params: task, key, task id. The key's hold, its end unknown until the task ran."""
        return (
            f"INSERT INTO {self.names.unique_hold} (unique_task, unique_key, task_id, held_until)"
            " VALUES (%s, %s, %s, NULL) ON CONFLICT (unique_task, unique_key) DO UPDATE"
            " SET task_id = EXCLUDED.task_id, held_until = NULL"
        )

    @cached_property
    def duplicate(self) -> str:
        """Params: task, key. The message holding the key, locked (``replace`` rewrites it)."""
        return (
            f"SELECT id, payload, lease_token IS NULL FROM {self.names.message}"
            " WHERE unique_task = %s AND unique_key = %s FOR UPDATE"
        )

    @cached_property
    def replace(self) -> str:
        """Params: payload, priority, due time, id."""
        return (
            f"UPDATE {self.names.message} SET payload = %s, priority = %s,"
            " visible_at = greatest(now(), coalesce(%s::timestamptz, now())) WHERE id = %s"
        )


def _task_id(raw: str) -> str | None:
    try:
        headers = loads(raw).get("headers") or {}
    except (ValueError, AttributeError):
        return None
    found = headers.get("id")
    return found if isinstance(found, str) else None


def _adopt_id(message: dict[str, Any], old_id: str) -> dict[str, Any]:
    """The new message under the duplicate's task id (its result is the one callers hold)."""
    headers = message.setdefault("headers", {})
    new_id = headers.get("id")
    headers["id"] = old_id
    if headers.get("root_id") == new_id:
        headers["root_id"] = old_id
    properties = message.setdefault("properties", {})
    if properties.get("correlation_id") == new_id:
        properties["correlation_id"] = old_id
    return message


def publish_unique(
    channel: Any, request: UniqueSend, queue: str, message: dict[str, Any], priority: int
) -> None:
    """The channel's ``_put`` for a message with a unique key: insert it unless the key is taken
    (see the module docstring), on the caller's connection inside ``send_in_transaction``, else
    on the channel's own.

    Each try runs in a transaction of its own, or in a savepoint of the caller's: the insert and
    the look-up of a finished task's hold see one another's effects in order, so a send racing
    the first task's ack cannot slip between the two.
    """
    queue_id = channel._queue_id(queue)
    outer = caller_connection()
    if outer is not None:
        check_same_database(outer, channel._database())
        if outer.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            # Nothing begun on the caller's connection yet: begin its transaction, so each try
            # is a savepoint in it rather than a transaction of its own that commits.
            outer.execute("SELECT 1")
    conn = outer if outer is not None else channel._conn()
    placed = (queue_id, priority, due_at(message), limits.tenant_of(message))
    try:
        for _ in range(_ATTEMPTS):
            if _attempt(conn, UniqueSql(channel.names), request, message, placed,
                        channel.max_message_bytes):  # fmt: skip
                return
    except psycopg.OperationalError:
        if outer is None:
            channel._drop_connection()
        raise
    raise psycopg.errors.UniqueViolation(f"unique key {request.key!r} kept changing hands")


def _attempt(
    conn: psycopg.Connection[Any],
    sql: UniqueSql,
    request: UniqueSend,
    message: dict[str, Any],
    placed: tuple[int, int, Any, str | None],
    max_bytes: int,
) -> bool:
    """One try; False when the duplicate vanished before it could be read. ``placed``: queue
    id, priority, due time and tenant id."""
    queue_id, priority, due, tenant = placed
    key = (request.task, request.key)
    if request.unique_for is not None:
        message.setdefault("headers", {})[HOLD_HEADER] = [*key, request.unique_for]
    with conn.transaction():
        body = limits.checked(dumps(message), max_bytes)
        inserted = conn.execute(
            sql.put, (body, queue_id, priority, due, tenant, *key, *limits.limit_columns(message))
        ).fetchone()
        held = conn.execute(sql.held, key).fetchone()
        if inserted is not None:
            if held is None:
                if request.unique_for is not None:
                    conn.execute(sql.hold, (*key, message["headers"].get("id")))
                return True
            request.existing_id = held[0]
            raise psycopg.Rollback()  # the key is held: undo the insert (and end the block)
        if held is not None:
            request.existing_id = held[0]
            return True
        row = conn.execute(sql.duplicate, key).fetchone()
        if row is None:
            return False  # it finished meanwhile: try again
        message_id, raw, waiting = row
        request.existing_id = _task_id(raw)
        if request.mode == "replace" and waiting and request.existing_id:
            body = limits.checked(dumps(_adopt_id(message, request.existing_id)), max_bytes)
            conn.execute(sql.replace, (body, priority, due, message_id))
            request.replaced = True
        return True
    return True  # rolled back: the hold's task id is the answer


def finish_hold(
    conn: psycopg.Connection[Any], names: Names, task: str, key: str, task_id: str, seconds: float
) -> None:
    """The task ``task_id`` ran: its key stays taken for ``seconds`` from now."""
    conn.execute(
        f"UPDATE {names.unique_hold} SET held_until = now() + make_interval(secs => %s)"
        " WHERE unique_task = %s AND unique_key = %s AND task_id = %s",
        (seconds, task, key, task_id),
    )


def prune_holds(conn: psycopg.Connection[Any], names: Names, limit: int) -> int:
    """Delete up to ``limit`` holds that ran out, or whose task left without running (revoked,
    purged); the workers' pruner calls this."""
    cur = conn.execute(
        f"DELETE FROM {names.unique_hold} WHERE ctid = ANY(ARRAY("
        f"SELECT h.ctid FROM {names.unique_hold} h WHERE h.held_until < now()"
        " OR h.held_until IS NULL AND NOT EXISTS ("
        f"SELECT 1 FROM {names.message} m"
        " WHERE m.unique_task = h.unique_task AND m.unique_key = h.unique_key)"
        " LIMIT %s))",
        (limit,),
    )
    return cur.rowcount
