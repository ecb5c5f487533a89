"""Transactional enqueue: a task becomes visible only if the caller's transaction commits.

The outbox pattern without an outbox: the message row is inserted on the caller's own
connection, inside its open transaction, so it commits or rolls back with the caller's writes.
No other Celery broker can offer this, because no other broker lives in the application's
database.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import psycopg
from celery.canvas import Signature
from celery.result import AsyncResult

from pgcelery.broker.async_publish import is_async_connection, send_in_async_transaction
from pgcelery.broker.transport import enqueue_using
from pgcelery.exceptions import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    _AsyncSqlAlchemy: TypeAlias = AsyncSession | AsyncConnection


def _psycopg_connection(connection_or_session: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy Session/Connection (or a psycopg one)."""
    target = connection_or_session
    if hasattr(target, "get_bind") and hasattr(target, "connection"):  # ORM Session
        target = target.connection()  # begins the session's transaction if none is open
    driver = getattr(getattr(target, "connection", None), "driver_connection", None)
    if driver is not None:  # SQLAlchemy Connection
        if not target.in_transaction():
            # Nothing has begun the transaction yet (``engine.connect()`` then straight to
            # us): begin it, so the caller's ``commit()`` commits the message. Otherwise the
            # insert would sit in a database transaction SQLAlchemy does not know about, and
            # be rolled back when the connection goes back to the pool.
            target.begin()
        target = driver
    if not isinstance(target, psycopg.Connection):
        raise ConfigurationError(
            "send_in_transaction needs a psycopg 3 connection: pass a SQLAlchemy Session or "
            "Connection on a postgresql+psycopg:// engine (for example pgcelery.db.session()), "
            "or a psycopg.Connection."
        )
    if target.autocommit:
        raise ConfigurationError(
            "send_in_transaction needs an open transaction, but the connection is in "
            "autocommit mode: the task would be sent at once, not with your commit."
        )
    return target


@contextmanager
def enqueue_in(connection_or_session: Any) -> Iterator[None]:
    """Within the block, tasks published on this thread join the caller's transaction.

    ``apply_async``/``delay``/``send_task`` calls inside are inserted on that connection and
    only become visible when it commits; a rollback discards them.
    """
    with enqueue_using(_psycopg_connection(connection_or_session)):
        yield


@overload
def send_in_transaction(
    connection_or_session: psycopg.AsyncConnection[Any] | _AsyncSqlAlchemy,
    signature: Signature,
    **options: Any,
) -> Coroutine[Any, Any, AsyncResult]: ...
@overload
def send_in_transaction(
    connection_or_session: Any, signature: Signature, **options: Any
) -> AsyncResult: ...
def send_in_transaction(
    connection_or_session: Any, signature: Signature, **options: Any
) -> AsyncResult | Coroutine[Any, Any, AsyncResult]:
    """Send ``signature`` inside the caller's open transaction (see module docstring).

    On an async connection or session (psycopg ``AsyncConnection``, SQLAlchemy ``AsyncSession``
    or ``AsyncConnection``) it returns a coroutine: ``await send_in_transaction(session, sig)``.
    """
    if is_async_connection(connection_or_session):
        return send_in_async_transaction(connection_or_session, signature, **options)
    with enqueue_in(connection_or_session):
        # retry=False: retrying a failed INSERT on a connection whose transaction is now
        # aborted cannot succeed; the error belongs to the caller's transaction.
        return signature.apply_async(retry=False, **options)
