"""Bulk enqueue: the messages of a group, or of ``send_many``, in one INSERT and one commit.

Celery publishes a group's tasks one by one on one producer it holds for the whole group
(``app.producer_or_acquire()``, the pattern Celery documents for sending many tasks). pgcelery's
app opens a :func:`scope` around every such block: a publish made *inside* a block that is
itself inside another (a group's members, tasks sent with ``producer=`` of an outer block) is
kept in memory, and the outermost block's end inserts them all with one statement
(``unnest`` of arrays) on one commit. All or nothing: if the block raises, nothing is sent.

A single ``apply_async`` opens only one block, so it publishes exactly as before: one INSERT,
retried by Celery's publish retry policy. The batch's INSERT is retried here with the same
policy (a statement that failed on a dropped connection did not commit, so trying again sends
each message once). Inside ``send_in_transaction`` the batch goes into the caller's
transaction, and is never retried: the caller's transaction decides.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from celery.canvas import Signature
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

#: payload, queue id, priority, due time, tenant id, then the limit columns.
Row = tuple[str, int, int, Any, str | None, *tuple[Any, ...]]


def as_json(rows: list[Row]) -> tuple[str]:
    """Rows as the one JSON parameter of ``MessageSql.put_many``."""
    return (
        json.dumps(
            [
                [payload, queue, priority, None if due is None else due.isoformat(), *rest]
                for payload, queue, priority, due, *rest in rows
            ]
        ),
    )


class BatchingChannel(Protocol):
    """What a batch needs of the channel that publishes it."""

    def _put_rows(self, rows: list[Row]) -> None: ...

    def _drop_connection(self) -> None: ...


class Batch:
    """Rows kept per channel until the outermost block ends."""

    def __init__(self, retry_policy: dict[str, Any]) -> None:
        self.depth = 0
        self.retry_policy = retry_policy
        self.rows: dict[int, tuple[BatchingChannel, list[Row]]] = {}

    def add(self, channel: BatchingChannel, row: Row) -> None:
        self.rows.setdefault(id(channel), (channel, []))[1].append(row)

    def flush(self, in_caller_transaction: bool) -> None:
        for channel, rows in self.rows.values():
            if in_caller_transaction:
                channel._put_rows(rows)
            else:
                _with_retries(channel, rows, self.retry_policy)
        self.rows.clear()


_BATCH: contextvars.ContextVar[Batch | None] = contextvars.ContextVar(
    "pgcelery_publish_batch", default=None
)


def collecting() -> Batch | None:
    """The batch a publish made now belongs in, or None to publish it at once."""
    batch = _BATCH.get()
    return batch if batch is not None and batch.depth > 1 else None


@contextmanager
def scope(retry_policy: dict[str, Any], in_caller_transaction: bool) -> Iterator[None]:
    """One ``producer_or_acquire`` block; the outermost one sends what inner ones collected."""
    batch = _BATCH.get()
    token = None
    if batch is None:
        batch = Batch(retry_policy)
        token = _BATCH.set(batch)
    batch.depth += 1
    try:
        yield
        if token is not None:
            batch.flush(in_caller_transaction)
    finally:
        batch.depth -= 1
        if token is not None:
            _BATCH.reset(token)


def _with_retries(channel: BatchingChannel, rows: list[Row], policy: dict[str, Any]) -> None:
    retries = int(policy.get("max_retries", 3) or 0)
    wait = float(policy.get("interval_start", 0.0))
    for attempt in range(retries + 1):
        try:
            channel._put_rows(rows)
            return
        except psycopg.OperationalError as exc:
            channel._drop_connection()
            if attempt == retries:
                raise OperationalError(
                    f"could not send {len(rows)} messages in one batch: {exc}"
                ) from exc
        time.sleep(wait)
        wait = min(wait + float(policy.get("interval_step", 0.2)), policy.get("interval_max", 1))


def send_many(signatures: Iterable[Signature], **options: Any) -> list[AsyncResult]:
    """Send every signature with one INSERT and one commit; their results, in order.

    ``options`` apply to each (``queue=``, ``countdown=``, ...). Inside
    ``send_in_transaction``'s block, the messages join the caller's transaction.
    """
    pending = list(signatures)
    if not pending:
        return []
    app = pending[0].app
    with app.producer_or_acquire() as producer:
        return [signature.apply_async(producer=producer, **options) for signature in pending]
