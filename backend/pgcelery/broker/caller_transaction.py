"""Publishing on the caller's connection, and only on one to the broker's own database.

While :func:`enqueue_using` is active, messages published on this thread are inserted on the
caller's connection, inside its open transaction (``send_in_transaction``). On a connection to
another database (another cluster, or another database of the same cluster) the insert either
fails or, worse, succeeds into a ``kombu_message`` no worker of this broker reads: the task
would be silently lost. So the first message a channel publishes on a caller's connection
compares the two databases: the cluster's system identifier (shared by a primary and its
physical replicas, stable across restarts) and the database name.
"""

from __future__ import annotations

import contextvars
import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from pgcelery.exceptions import ConfigurationError

log = logging.getLogger(__name__)

_CALLER: contextvars.ContextVar[psycopg.Connection[Any] | None] = contextvars.ContextVar(
    "pgcelery_enqueue_connection", default=None
)


@contextmanager
def enqueue_using(connection: psycopg.Connection[Any]) -> Iterator[None]:
    """Publish on ``connection`` (in its open transaction) for the duration of the block."""
    token = _CALLER.set(connection)
    try:
        yield
    finally:
        _CALLER.reset(token)


def caller_connection() -> psycopg.Connection[Any] | None:
    """The caller's connection messages published now go into, if any."""
    return _CALLER.get()


IDENTITY_SQL = (
    "SELECT (SELECT system_identifier FROM pg_control_system())::text, current_database()"
)
Identity = tuple[str | None, str]
#: Callers' connections already found to be on the broker's database.
_CHECKED: weakref.WeakKeyDictionary[psycopg.Connection[Any], Identity] = weakref.WeakKeyDictionary()


def identity_of(connection: psycopg.Connection[Any]) -> Identity:
    """Which database ``connection`` is on, without disturbing its open transaction."""
    try:
        # A savepoint inside the caller's transaction (a transaction of its own otherwise), so a
        # server that refuses pg_control_system() does not abort the caller's work.
        with connection.transaction():
            row = connection.execute(IDENTITY_SQL).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        with connection.transaction():
            row = connection.execute("SELECT NULL, current_database()").fetchone()
    assert row is not None
    return (None if row[0] is None else str(row[0]), str(row[1]))


def check_same_database(outer: psycopg.Connection[Any], broker: Identity) -> None:
    """Refuse ``outer`` unless it is on the broker's database (checked once per connection)."""
    if _CHECKED.get(outer) == broker:
        return
    refuse_other_database(identity_of(outer), broker)
    _CHECKED[outer] = broker


def refuse_other_database(found: Identity, broker: Identity) -> None:
    """Raise :class:`ConfigurationError` unless ``found`` is the broker's database."""
    same_cluster = found[0] is None or broker[0] is None or found[0] == broker[0]
    if not (same_cluster and found[1] == broker[1]):
        raise ConfigurationError(
            f"send_in_transaction got a connection to database {found[1]!r}"
            f"{'' if found[0] == broker[0] else ' on another server'}, but the broker is database "
            f"{broker[1]!r}: the task would never reach a worker. Pass a connection to the "
            "database in DATABASE_URL (for example pgcelery.db.session())."
        )
