"""``send_in_transaction`` on async connections, and ``pgcelery.db``'s async sessions."""

from __future__ import annotations

import importlib.util
import os
from typing import Any, TypeVar

import psycopg
import pytest
import sqlalchemy as sa
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from celery.result import AsyncResult

from pgcelery import aget, db, send_in_transaction, tenant_context
from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.event_loop import run

T = TypeVar("T")
A = "6f1f3c39-8a4e-4a65-9a2b-0d7a0e6f3b11"
SEEN = (
    "SELECT current_setting('app.current_tenant_id', true),"
    " current_setting('app.correlation_id', true), pg_backend_pid()"
)


class Rollback(Exception):
    pass


def queued(database_url: str) -> int:
    with psycopg.connect(postgres.libpq(database_url)) as conn:
        row = conn.execute("SELECT count(*) FROM kombu_message").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def db_settings(database_url: str) -> Settings:
    with psycopg.connect(postgres.libpq(database_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (name text PRIMARY KEY)")
    return Settings(
        DATABASE_URL=database_url, metrics_enabled=False, db_pool_size=1, db_max_overflow=0
    )


def test_async_psycopg_connection_commits_and_rolls_back_the_message(
    app: Celery, worker: TestWorkController, database_url: str
) -> None:
    add = app.signature("tests.add")

    async def main() -> tuple[AsyncResult, Any]:
        url = postgres.libpq(database_url)
        lost: list[AsyncResult] = []

        async def send_then_fail() -> None:
            async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
                lost.append(await send_in_transaction(conn, add.clone(args=(1, 1))))
                raise Rollback

        with pytest.raises(Rollback):
            await send_then_fail()
        async with await psycopg.AsyncConnection.connect(url) as conn:
            kept = await send_in_transaction(conn, add.clone(args=(20, 22)))
            assert queued(database_url) == 0  # not visible before the commit
            await conn.commit()
        value = await aget(kept, timeout=60)
        # Sent after both: had the rolled-back one been queued, it would have run by now.
        assert await aget(app.send_task("tests.add", args=(0, 0)), timeout=60) == 0
        return lost[0], value

    lost, value = run(main)
    assert value == 42
    assert lost.state == "PENDING"
    assert queued(database_url) == 0


def test_an_autocommit_async_connection_is_refused(app: Celery, database_url: str) -> None:
    async def main() -> None:
        url = postgres.libpq(database_url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            with pytest.raises(ConfigurationError, match="autocommit"):
                await send_in_transaction(conn, app.signature("tests.add", args=(1, 1)))

    run(main)
    assert queued(database_url) == 0


def test_an_async_connection_to_another_database_is_refused(
    app: Celery, empty_database_url: str, database_url: str
) -> None:
    async def main() -> None:
        other = postgres.libpq(empty_database_url)
        async with await psycopg.AsyncConnection.connect(other) as conn:
            with pytest.raises(ConfigurationError, match="never reach a worker"):
                await send_in_transaction(conn, app.signature("tests.add", args=(1, 1)))

    run(main)
    assert queued(database_url) == 0


def test_async_connection_sets_the_tenant_gucs_transaction_locally(
    db_settings: Settings,
) -> None:
    async def main() -> tuple[Any, Any, Any]:
        with tenant_context(A, correlation_id="it's; a 'quoted' id"):
            async with db.async_connection(db_settings) as conn:
                inside = await (await conn.execute(SEEN)).fetchone()
                await conn.execute("INSERT INTO items VALUES ('kept')")

        async def insert_then_fail() -> None:
            async with db.async_connection(db_settings) as conn:
                await conn.execute("INSERT INTO items VALUES ('lost')")
                raise Rollback

        with pytest.raises(Rollback):
            await insert_then_fail()
        async with db.async_connection(db_settings) as conn:
            after = await (await conn.execute(SEEN)).fetchone()
            names = await (await conn.execute("SELECT name FROM items")).fetchall()
        return inside, after, names

    inside, after, names = run(main)
    assert inside[:2] == (A, "it's; a 'quoted' id")
    assert after[2] == inside[2], "expected the one pooled connection"
    assert after[:2] == ("", "")  # nothing outlived the tenant's transaction
    assert names == [("kept",)]


# In CI the dependency must be there (pgcelery's "async" extra): the test fails without it.
needs_greenlet = pytest.mark.skipif(
    importlib.util.find_spec("greenlet") is None and not os.environ.get("CI"),
    reason="SQLAlchemy's asyncio layer needs greenlet (pip install 'sqlalchemy[asyncio]')",
)


@needs_greenlet
def test_async_session_sets_the_gucs_and_sends_in_its_transaction(
    app: Celery, worker: TestWorkController, db_settings: Settings, database_url: str
) -> None:
    add = app.signature("tests.add")

    async def insert_send_then_fail() -> None:
        async with db.async_session(db_settings) as session:
            await session.execute(sa.text("INSERT INTO items VALUES ('lost')"))
            await send_in_transaction(session, add.clone(args=(1, 1)))
            raise Rollback

    async def main() -> tuple[Any, Any, Any]:
        with tenant_context(A):
            with pytest.raises(Rollback):
                await insert_send_then_fail()
            async with db.async_session(db_settings) as session:
                seen = (await session.execute(sa.text(SEEN))).one()
                await session.execute(sa.text("INSERT INTO items VALUES ('kept')"))
                kept = await send_in_transaction(session, add.clone(args=(2, 3)))
        value = await aget(kept, timeout=60)
        async with db.async_engine(db_settings).connect() as conn:
            after = (await conn.execute(sa.text(SEEN))).one()
            names = (await conn.execute(sa.text("SELECT name FROM items"))).all()
        return (seen, value), after, names

    (seen, value), after, names = run(main)
    assert seen[0] == A
    assert value == 5
    assert after[:2] == ("", "")
    assert [tuple(n) for n in names] == [("kept",)]
    assert queued(database_url) == 0
