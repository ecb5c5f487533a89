"""The application's database from an event loop, with the same tenant GUCs as ``pgcelery.db``.

Every transaction opened here starts with ``SELECT set_config(name, value, true)`` for the
tenant and correlation ids bound by ``tenant_context`` (or the running task), exactly as the
sync :mod:`pgcelery.tenancy.db` does: transaction-local, so a pooled connection never carries one
request's tenant into the next.

    from pgcelery import db

    async with db.async_connection() as conn:      # psycopg AsyncConnection, in a transaction
        await conn.execute("INSERT INTO orders ...", (...))
    async with db.async_session() as session:      # SQLAlchemy AsyncSession (needs greenlet)
        session.add(Order(...))

Both commit on success and roll back on error. Connections belong to the event loop that
opened them (one pool per loop; ``await pgcelery.aclose()`` closes them).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from pgcelery import dsn, event_loops
from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import Settings
from pgcelery.tenancy.gucs import EngineKey, apply_ids, apply_ids_async, key_for

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


def _key(settings: Settings | None) -> EngineKey:
    return key_for(settings, 0)  # one pool per event loop, not per process


def _pool(key: EngineKey) -> event_loops.LoopConnections:
    def make() -> event_loops.LoopConnections:
        # Not autocommit: each use is one transaction, committed or rolled back below.
        kwargs: dict[str, Any] = {"prepare_threshold": None} if key.transaction_pooling else {}
        size = key.pool_size + key.max_overflow
        return event_loops.LoopConnections(dsn.libpq_url(key.url), size, **kwargs)

    return event_loops.per_loop(("pgcelery.db.async_pool", key), make, lambda pool: pool.close)


@asynccontextmanager
async def async_connection(
    settings: Settings | None = None,
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled psycopg ``AsyncConnection`` in a transaction that set the tenant GUCs:
    committed on success, rolled back on error."""
    key = _key(settings)
    async with _pool(key).connection() as conn:
        try:
            await apply_ids_async(key, conn)
            yield conn
        except BaseException:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):  # the caller's error matters more
                    await conn.rollback()
            raise
        await conn.commit()


def _sessions(key: EngineKey) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    if importlib.util.find_spec("greenlet") is None:  # SQLAlchemy's asyncio layer runs on it
        raise ConfigurationError(
            "pgcelery.db.async_session needs SQLAlchemy's asyncio extra: "
            "pip install 'pgcelery[asyncio]' (or use pgcelery.db.async_connection())."
        )
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    def make() -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
        engine = create_async_engine(
            key.url,
            pool_size=key.pool_size,
            max_overflow=key.max_overflow,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={"prepare_threshold": None} if key.transaction_pooling else {},
        )

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            apply_ids(key, connection)

        return engine, async_sessionmaker(engine, expire_on_commit=False)

    return event_loops.per_loop(
        ("pgcelery.db.async_engine", key), make, lambda found: found[0].dispose
    )


def async_engine(settings: Settings | None = None) -> AsyncEngine:
    """This event loop's SQLAlchemy ``AsyncEngine`` whose transactions set the tenant GUCs."""
    return _sessions(_key(settings))[0]


@asynccontextmanager
async def async_session(settings: Settings | None = None) -> AsyncIterator[AsyncSession]:
    """A SQLAlchemy ``AsyncSession``: committed on success, rolled back on error, closed."""
    factory = _sessions(_key(settings))[1]
    async with factory() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
