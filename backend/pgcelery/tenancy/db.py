"""The application's database access inside tasks: one pooled engine per process, tenant-aware.

Every transaction opened here starts with ``SELECT set_config(name, value, true)`` for the
tenant and correlation ids of the running task or ``tenant_context`` block, so row-level
security policies see the tenant. The settings are transaction-local: they end with the
transaction, so a pooled connection never carries one task's tenant into the next (a session
``SET`` would). With no tenant bound, no tenant setting is made and policies see none.

    from pgcelery import db

    with db.session() as session:        # commits on success, rolls back on error
        session.add(Invoice(...))
    with db.connection() as conn:
        conn.execute(sa.text("SELECT ..."), {...})
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from pgcelery.settings import Settings
from pgcelery.tenancy.gucs import EngineKey as _Key
from pgcelery.tenancy.gucs import apply_ids as _apply_ids
from pgcelery.tenancy.gucs import key_for

_ENGINES: dict[_Key, tuple[sa.Engine, sessionmaker[Session]]] = {}
_LOCK = threading.Lock()


def _create(key: _Key) -> tuple[sa.Engine, sessionmaker[Session]]:
    engine = sa.create_engine(
        key.url,
        pool_size=key.pool_size,
        max_overflow=key.max_overflow,
        pool_pre_ping=True,
        # A connection older than this is replaced: bounds the life of server-side state.
        pool_recycle=1800,
        # Behind PgBouncer in transaction pooling mode: no server-side prepared statements.
        connect_args={"prepare_threshold": None} if key.transaction_pooling else {},
    )

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        _apply_ids(key, connection)

    return engine, sessionmaker(bind=engine)


def _entry(settings: Settings | None) -> tuple[sa.Engine, sessionmaker[Session]]:
    key = key_for(settings, os.getpid())
    with _LOCK:
        entry = _ENGINES.get(key)
        if entry is None:
            entry = _ENGINES[key] = _create(key)
        return entry


def engine(settings: Settings | None = None) -> sa.Engine:
    """This process's engine for ``settings`` (default: the current Celery app's settings).

    Created on first use and keyed by process id, so a forked worker child builds its own pool
    instead of sharing its parent's sockets.
    """
    return _entry(settings)[0]


@contextmanager
def connection(settings: Settings | None = None) -> Iterator[sa.Connection]:
    """A pooled connection in a transaction: committed on success, rolled back on error."""
    with engine(settings).connect() as conn:
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


@contextmanager
def session(settings: Settings | None = None) -> Iterator[Session]:
    """An ORM session: committed on success, rolled back on error, always closed."""
    factory = _entry(settings)[1]
    with factory() as orm_session:
        try:
            yield orm_session
        except BaseException:
            orm_session.rollback()
            raise
        orm_session.commit()


def dispose() -> None:
    """Close every pooled connection this process opened through pgcelery.db."""
    with _LOCK:
        mine = [key for key in _ENGINES if key.pid == os.getpid()]
        entries = [_ENGINES.pop(key) for key in mine]
    for found_engine, _ in entries:
        found_engine.dispose()


def _forget_parent_engines() -> None:
    # In a fork child: drop the parent's pools without closing sockets the parent still uses,
    # and replace a lock another parent thread may have held at the fork.
    global _LOCK
    _LOCK = threading.Lock()
    for found_engine, _ in _ENGINES.values():
        found_engine.dispose(close=False)
    _ENGINES.clear()


os.register_at_fork(after_in_child=_forget_parent_engines)


# The same, from an event loop (psycopg AsyncConnection, SQLAlchemy AsyncSession).
from pgcelery.tenancy.async_db import (  # noqa: E402
    async_connection,
    async_engine,
    async_session,
)

__all__ = [
    "async_connection",
    "async_engine",
    "async_session",
    "connection",
    "dispose",
    "engine",
    "session",
]
