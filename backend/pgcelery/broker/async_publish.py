"""Publishing from an event loop: ``await asend(signature)`` and async transactional enqueue.

The message is built by Celery and kombu exactly as ``apply_async`` builds it (serialization,
routing, priority, ``eta``, the tenant headers): the channel records the ``INSERT`` it would run
(:mod:`pgcelery.broker.recording`) and this module runs that same statement on a psycopg
``AsyncConnection``, so the event loop never waits on a socket. Connections are kept per event
loop (:mod:`pgcelery.event_loops`); a group's messages go in one transaction.

The first publish of an app in a process also connects the app's producer and checks the
schema (synchronous work, once): that one runs in a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from celery import Celery
from celery.canvas import Signature
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError

from pgcelery import connections, event_loops
from pgcelery.broker.caller_transaction import IDENTITY_SQL, Identity, refuse_other_database
from pgcelery.broker.recording import Insert, recording
from pgcelery.exceptions import ConfigurationError

#: Connections each loop keeps open for publishing, per database.
POOL_SIZE = 4
#: Seconds between attempts when the database is unreachable (then kombu's OperationalError).
RETRY_DELAYS = (0.2, 0.5, 1.0)

#: Apps whose producer is connected in this process (the first publish ran in a thread).
_WARM: weakref.WeakSet[Celery] = weakref.WeakSet()


class _Publisher(event_loops.LoopConnections):
    """A few autocommit connections of one loop to the broker's database."""

    def __init__(self, insert: Insert, transaction_pooling: bool) -> None:
        server = {}
        if insert.statement_timeout > 0:
            server["statement_timeout"] = str(round(insert.statement_timeout * 1000))
        kwargs = connections.connect_kwargs(transaction_pooling, **server)
        super().__init__(insert.conninfo, POOL_SIZE, **kwargs)
        self.identity: Identity | None = None


def _publisher(insert: Insert, transaction_pooling: bool) -> _Publisher:
    return event_loops.per_loop(
        ("pgcelery.publish", insert.conninfo, transaction_pooling),
        lambda: _Publisher(insert, transaction_pooling),
        lambda publisher: publisher.close,
    )


def _app_of(signature: Signature) -> Celery:
    app = signature.app
    if not isinstance(app, Celery):  # pragma: no cover - Signature.app always falls back
        raise ConfigurationError("asend needs a signature bound to a Celery app")
    return app


def _record(signature: Signature, options: dict[str, Any]) -> tuple[AsyncResult, list[Insert]]:
    with recording() as inserts:
        # retry=False: nothing touches the network here; retries happen around the INSERT.
        result = signature.apply_async(retry=False, **options)
    return result, inserts


async def record(signature: Signature, **options: Any) -> tuple[AsyncResult, list[Insert]]:
    """The result handle and the message rows of publishing ``signature`` (nothing sent yet)."""
    app = _app_of(signature)
    if app in _WARM:
        return _record(signature, options)
    # First publish of this app in the process: connecting and the schema check block, so it
    # runs in a thread; concurrent first publishes wait for it instead of each taking one.
    url = str(app.conf.broker_write_url or app.conf.broker_url or "")
    if not url.startswith("sqla+postgresql+psycopg"):
        raise ConfigurationError(
            "asend and send_in_transaction need pgcelery's broker (sqla+postgresql+psycopg://), "
            f"but app {app.main!r} has another one: make the app with pgcelery.create_app and "
            "import it before the tasks it sends."
        )
    async with event_loops.per_loop(("pgcelery.publish.warming", id(app)), asyncio.Lock):
        if app in _WARM:
            return _record(signature, options)
        found = await asyncio.to_thread(_record, signature, options)
        _WARM.add(app)
        return found


async def _run(conn: psycopg.AsyncConnection[Any], inserts: Sequence[Insert]) -> None:
    if len(inserts) == 1:
        await conn.execute(inserts[0].statement, inserts[0].values)
        return
    async with conn.transaction():
        for insert in inserts:
            await conn.execute(insert.statement, insert.values)


async def asend(signature: Signature, **options: Any) -> AsyncResult:
    """Publish ``signature`` like ``apply_async(**options)`` without blocking the event loop.

    Returns the ``AsyncResult`` once the message is committed. The database being unreachable
    is retried a few times (:data:`RETRY_DELAYS`), then raised as kombu's ``OperationalError``,
    as a synchronous publish does.
    """
    result, inserts = await record(signature, **options)
    if not inserts:
        return result
    transaction_pooling = _transaction_pooling(_app_of(signature))
    publisher = _publisher(inserts[0], transaction_pooling)
    for delay in (*RETRY_DELAYS, None):
        try:
            async with publisher.connection() as conn:
                await _run(conn, inserts)
            return result
        except psycopg.OperationalError as exc:
            if delay is None:
                raise KombuOperationalError(str(exc)) from exc
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _transaction_pooling(app: Celery) -> bool:
    options = app.conf.broker_transport_options or {}
    return not bool(options.get("listen", True))


async def identity_of(conn: psycopg.AsyncConnection[Any]) -> Identity:
    """Which database ``conn`` is on, without disturbing its open transaction."""
    try:
        async with conn.transaction():
            row = await (await conn.execute(IDENTITY_SQL)).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        async with conn.transaction():
            row = await (await conn.execute("SELECT NULL, current_database()")).fetchone()
    assert row is not None
    return (None if row[0] is None else str(row[0]), str(row[1]))


_CHECKED: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], Identity] = (
    weakref.WeakKeyDictionary()
)


async def send_on(
    conn: psycopg.AsyncConnection[Any], signature: Signature, **options: Any
) -> AsyncResult:
    """Publish ``signature`` on the caller's async connection, inside its open transaction."""
    if conn.autocommit:
        raise ConfigurationError(
            "send_in_transaction needs an open transaction, but the connection is in "
            "autocommit mode: the task would be sent at once, not with your commit."
        )
    result, inserts = await record(signature, **options)
    if not inserts:
        return result
    publisher = _publisher(inserts[0], _transaction_pooling(_app_of(signature)))
    if publisher.identity is None:
        async with publisher.connection() as own:
            publisher.identity = await identity_of(own)
    if _CHECKED.get(conn) != publisher.identity:
        refuse_other_database(await identity_of(conn), publisher.identity)
        _CHECKED[conn] = publisher.identity
    for insert in inserts:
        await conn.execute(insert.statement, insert.values)
    return result


def is_async_connection(target: Any) -> bool:
    """Whether ``target`` is an async psycopg connection or SQLAlchemy AsyncSession/Connection."""
    if isinstance(target, psycopg.AsyncConnection):
        return True
    return type(target).__module__.startswith("sqlalchemy.ext.asyncio")


async def _driver_connection(target: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under a SQLAlchemy AsyncSession/AsyncConnection (or itself)."""
    if isinstance(target, psycopg.AsyncConnection):
        return target
    if hasattr(target, "get_bind") and hasattr(target, "connection"):  # AsyncSession
        target = await target.connection()  # begins the session's transaction if none is open
    if hasattr(target, "get_raw_connection"):  # AsyncConnection
        if not target.in_transaction():
            # As for a sync Connection: begin it, so the caller's commit() commits the message.
            await target.begin()
        raw = await target.get_raw_connection()
        driver = raw.driver_connection
        if isinstance(driver, psycopg.AsyncConnection):
            return driver
    raise ConfigurationError(
        "send_in_transaction needs a psycopg 3 connection: pass a SQLAlchemy AsyncSession or "
        "AsyncConnection on a postgresql+psycopg:// engine (for example "
        "pgcelery.db.async_session()), or a psycopg.AsyncConnection."
    )


async def send_in_async_transaction(
    target: Any, signature: Signature, **options: Any
) -> AsyncResult:
    """``send_in_transaction`` for an async connection or session: awaited by the caller."""
    return await send_on(await _driver_connection(target), signature, **options)
