from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from celery.result import AsyncResult

from pgcelery import dsn, send_in_transaction
from pgcelery.exceptions import ConfigurationError
from tests.support import postgres
from tests.support.workers import ROOT


class Rollback(Exception):
    pass


def test_enqueue_commits_and_rolls_back_with_the_callers_transaction(
    app: Celery, worker: TestWorkController, database_url: str
) -> None:
    engine = sa.create_engine(dsn.sync_url(database_url))
    add = app.tasks["tests.add"]
    sent: list[AsyncResult] = []

    def order_then_fail() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE orders (id int)"))
            sent.append(send_in_transaction(conn, add.s(40, 2)))
            raise Rollback

    with pytest.raises(Rollback):
        order_then_fail()
    lost = sent[0]
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id int)"))
        kept = send_in_transaction(conn, add.s(20, 2))
        # Not visible before the commit: nothing is queued outside this transaction yet.
        with engine.connect() as other:
            assert other.execute(sa.text("SELECT count(*) FROM kombu_message")).scalar() == 0
    assert kept.get(timeout=20) == 22
    # A task sent after both has run, so the rolled-back one would have run by now if queued.
    assert app.send_task("tests.add", args=(0, 0)).get(timeout=20) == 0
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT count(*) FROM celery_taskmeta WHERE task_id = :id"), {"id": lost.id}
        ).scalar()
        queued = conn.execute(sa.text("SELECT count(*) FROM kombu_message")).scalar()
    assert rows == 0
    assert queued == 0
    engine.dispose()


def test_autocommit_connection_is_refused(app: Celery, database_url: str) -> None:
    engine = sa.create_engine(dsn.sync_url(database_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn, pytest.raises(ConfigurationError, match="autocommit"):
        send_in_transaction(conn, app.signature("tests.add", args=(1, 1)))
    engine.dispose()


def test_a_stock_celery_producer_is_served(
    app: Celery, worker: TestWorkController, database_url: str
) -> None:
    # A plain Celery app (no pgcelery import) publishing through kombu's own sqla transport.
    script = textwrap.dedent(
        f"""
        from celery import Celery
        producer = Celery(broker={dsn.broker_url(database_url)!r})
        print(producer.send_task("tests.add", args=(5, 6), priority=3).id)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip().splitlines()[-1]
    assert app.AsyncResult(task_id).get(timeout=20) == 11


def test_enqueue_to_a_new_queue_inside_a_transaction_does_not_block(
    app: Celery, database_url: str
) -> None:
    # The queue row is created outside the caller's transaction: inside it, the same process's
    # next declare of that queue would wait for the caller's commit forever.
    engine = sa.create_engine(dsn.sync_url(database_url))
    with engine.begin() as conn:
        for _ in range(3):
            send_in_transaction(conn, app.tasks["tests.add"].s(1, 2), queue="brand-new-queue")
    with engine.connect() as conn:
        queued = conn.execute(
            sa.text(
                "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
                " WHERE q.name = 'brand-new-queue'"
            )
        ).scalar()
    assert queued == 3
    engine.dispose()


def _queued(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM kombu_message")).scalar_one())


def test_a_connection_with_no_transaction_begun_commits_with_the_callers_commit(
    app: Celery, worker: TestWorkController, database_url: str
) -> None:
    # engine.connect() then straight to send_in_transaction: nothing had begun SQLAlchemy's
    # transaction, and the caller's commit() used to commit nothing (the task was lost).
    engine = sa.create_engine(dsn.sync_url(database_url))
    with engine.connect() as conn:
        sent = send_in_transaction(conn, app.tasks["tests.add"].s(2, 3))
        assert _queued(engine) == 0  # not visible before the commit
        conn.commit()
    assert sent.get(timeout=20) == 5
    with engine.connect() as conn:
        send_in_transaction(conn, app.tasks["tests.add"].s(4, 4))
        # Closed without commit: rolled back, as the caller's own writes would be.
    assert _queued(engine) == 0
    engine.dispose()


def test_a_connection_to_another_database_is_refused(
    app: Celery, pg_admin_url: str, template_db: str
) -> None:
    # Another migrated database: the insert would succeed there, where no worker of this
    # broker ever looks.
    name = postgres.unique_name("pgc_other")
    other_url = postgres.create_database(pg_admin_url, name, template=template_db)
    engine = sa.create_engine(dsn.sync_url(other_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE orders (id int)"))
            with pytest.raises(ConfigurationError, match="the broker is database"):
                send_in_transaction(conn, app.signature("tests.add", args=(1, 1)))
            # The caller's transaction is untouched and still usable.
            conn.execute(sa.text("INSERT INTO orders VALUES (1)"))
        assert _queued(engine) == 0
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == 1
    finally:
        engine.dispose()
        postgres.drop_database(pg_admin_url, name)
