"""pgcelery.db: commit/rollback, transaction-local tenant settings, one engine per process."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from pgcelery import tenant_context
from pgcelery.settings import Settings
from pgcelery.tenancy import db
from tests.support.postgres import libpq

A = "6f1f3c39-8a4e-4a65-9a2b-0d7a0e6f3b11"
SEEN = sa.text(
    "SELECT current_setting('app.current_tenant_id', true),"
    " current_setting('app.correlation_id', true), pg_backend_pid()"
)


@pytest.fixture
def db_settings(database_url: str) -> Iterator[Settings]:
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (name text PRIMARY KEY)")
    yield Settings(
        DATABASE_URL=database_url, metrics_enabled=False, db_pool_size=1, db_max_overflow=0
    )
    db.dispose()


def _names(settings: Settings) -> list[str]:
    with db.connection(settings) as conn:
        return list(conn.execute(sa.text("SELECT name FROM items ORDER BY name")).scalars())


def _insert_then_fail(settings: Settings, name: str, use_session: bool) -> None:
    insert = sa.text("INSERT INTO items VALUES (:n)")
    if use_session:
        with db.session(settings) as session:
            session.execute(insert, {"n": name})
            raise RuntimeError("undo")
    with db.connection(settings) as conn:
        conn.execute(insert, {"n": name})
        raise RuntimeError("undo")


def test_connection_and_session_commit_on_success_and_roll_back_on_error(
    db_settings: Settings,
) -> None:
    with db.connection(db_settings) as conn:
        conn.execute(sa.text("INSERT INTO items VALUES (:n)"), {"n": "kept-1"})
    with pytest.raises(RuntimeError):
        _insert_then_fail(db_settings, "lost-1", use_session=False)
    with db.session(db_settings) as session:
        session.execute(sa.text("INSERT INTO items VALUES (:n)"), {"n": "kept-2"})
    with pytest.raises(RuntimeError):
        _insert_then_fail(db_settings, "lost-2", use_session=True)
    assert _names(db_settings) == ["kept-1", "kept-2"]


def test_every_transaction_in_a_tenant_context_has_the_settings_and_none_outlives_it(
    db_settings: Settings,
) -> None:
    with tenant_context(A, correlation_id="it's; a 'quoted' id") as scope:
        with db.connection(db_settings) as conn:
            first = conn.execute(SEEN).one()
            conn.commit()  # the next transaction on this connection gets them again
            second = conn.execute(SEEN).one()
        with db.session(db_settings) as session:
            in_session = session.execute(SEEN).one()
    assert first[:2] == second[:2] == in_session[:2] == (A, scope.correlation_id)
    with db.connection(db_settings) as conn:
        after = conn.execute(SEEN).one()
    assert after[2] == first[2], "expected the one pooled connection"
    assert after[:2] == ("", "")


def test_the_engine_is_shared_within_a_process(db_settings: Settings) -> None:
    assert db.engine(db_settings) is db.engine(db_settings)
    assert db.engine(db_settings).pool.size() == 1  # type: ignore[attr-defined]


def _backend_pid_in_child(settings: Settings, queue: Any) -> None:
    with db.connection(settings) as conn:
        queue.put(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar())


def test_a_forked_child_opens_its_own_connections(db_settings: Settings) -> None:
    with db.connection(db_settings) as conn:
        parent = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_backend_pid_in_child, args=(db_settings, queue))
    child.start()
    child_pid = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert child_pid != parent
    # The child never closed the parent's socket: the parent's pooled connection still works.
    with db.connection(db_settings) as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() == parent
